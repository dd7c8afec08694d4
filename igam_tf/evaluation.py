"""Robustness reports: one row per model, one column per attack, as the paper's tables.

Accuracies are in percent. `worst_case` is the accuracy on the examples that no
attack broke (the per-example worst case over every attack run): the number to
quote, since methods that shape input gradients can look robust to one attack
and not to another.
"""

import json
import os

from igam_tf import attacks

# The paper's columns first, then the stronger attacks.
COLUMN_ORDER = ('clean', 'fgsm', 'pgd5', 'pgd10', 'pgd20', 'pgd50', 'pgd100', 'apgd_ce',
                'apgd_dlr', 'worst_case')


def evaluate_models(models, dataset, attack_names, eps, *, restarts=1, num_examples=None,
                    seed=0, strategy=None, batch_size=100, progress=True):
  """{model name: {attack: accuracy %}} for {model name: classifier} on one dataset."""
  return {name: attacks.robust_accuracy(model, dataset, attack_names, eps=eps,
                                        restarts=restarts, num_examples=num_examples,
                                        seed=seed, strategy=strategy, batch_size=batch_size,
                                        progress=progress)
          for name, model in models.items()}


def columns(results):
  present = {column for row in results.values() for column in row}
  ordered = [c for c in COLUMN_ORDER if c in present]
  return ordered + sorted(present - set(ordered))


def markdown_table(results, first_column='Model'):
  cols = columns(results)
  lines = [f'| {first_column} | ' + ' | '.join(_heading(c) for c in cols) + ' |',
           '|---|' + '---:|' * len(cols)]
  for name, row in results.items():
    lines.append(f'| {name} | ' + ' | '.join(
        f'{row[c]:.1f}' if c in row else '' for c in cols) + ' |')
  return '\n'.join(lines)


def _heading(column):
  names = {'clean': 'Clean', 'fgsm': 'FGSM', 'apgd_ce': 'APGD-CE', 'apgd_dlr': 'APGD-DLR',
           'worst_case': 'Worst case'}
  if column in names:
    return names[column]
  return column.upper().replace('PGD', 'PGD-') if column.startswith('pgd') else column


def write_report(output_dir, results, settings, title='Robust accuracy (%)', notes=()):
  """Writes `results.json` ({model: {attack: %}, plus 'settings'}) and `results.md`."""
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, 'results.json'), 'w') as f:
    json.dump({**results, 'settings': settings}, f, indent=2, sort_keys=False)
  lines = [f'# {title}', '', markdown_table(results), '']
  lines += [f'- {note}' for note in notes]
  lines += ['', 'Settings: ' + ', '.join(f'{k}={v}' for k, v in settings.items()), '']
  with open(os.path.join(output_dir, 'results.md'), 'w') as f:
    f.write('\n'.join(lines))
  return '\n'.join(lines)
