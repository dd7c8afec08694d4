"""Robustness reports: one row per model, one column per attack, as the paper's tables.

Accuracies are in percent. `worst_case` is the accuracy on the examples that no
attack broke (the per-example worst case over every attack run): the number to
quote, since methods that shape input gradients can look robust to one attack
and not to another.
"""

import json
import os

from igam_tf import attacks
from igam_tf import autoattack  # pylint: disable=unused-import (registers its attacks)

# The paper's columns first, then the stronger attacks.
COLUMN_ORDER = ('clean', 'fgsm', 'pgd5', 'pgd10', 'pgd20', 'pgd50', 'pgd100', 'apgd_ce',
                'apgd_dlr', 'worst_case')


def evaluate_models(models, dataset, attack_names, eps, *, restarts=1, num_examples=None,
                    seed=0, strategy=None, batch_size=100, progress=True, step_size=None,
                    l2_eps=None):
  """{model name: {attack: accuracy %}} for {model name: classifier} on one dataset
  (a classifier: a Keras model or a callable images -> logits, e.g. a SavedModel's)."""
  return {name: attacks.robust_accuracy(model, dataset, attack_names, eps=eps,
                                        restarts=restarts, num_examples=num_examples,
                                        seed=seed, strategy=strategy, batch_size=batch_size,
                                        progress=progress, step_size=step_size,
                                        l2_eps=l2_eps)
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


def markdown_report(results, settings, title='Robust accuracy (%)', notes=(), warnings=()):
  """The table, then notes, warnings (e.g. of gradient masking) and settings."""
  lines = [f'# {title}', '', markdown_table(results), '']
  lines += [f'- {note}' for note in notes]
  if warnings:
    lines += ['', '## Warnings', '']
    lines += [f'- WARNING: {warning}' for warning in warnings]
  lines += ['', 'Settings: ' + ', '.join(f'{k}={v}' for k, v in settings.items()), '']
  return '\n'.join(lines)


def _write(json_path, markdown_path, document, markdown):
  for path in (json_path, markdown_path):
    if os.path.dirname(path):
      os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(json_path, 'w') as f:
    json.dump(document, f, indent=2, sort_keys=False)
  with open(markdown_path, 'w') as f:
    f.write(markdown)


def write_report(output_dir, results, settings, title='Robust accuracy (%)', notes=(),
                 warnings=()):
  """Writes `results.json` ({model: {attack: %}, plus 'settings' and 'warnings'}) and
  `results.md`."""
  markdown = markdown_report(results, settings, title, notes, warnings)
  _write(os.path.join(output_dir, 'results.json'), os.path.join(output_dir, 'results.md'),
         {**results, 'settings': settings, 'warnings': list(warnings)}, markdown)
  return markdown


def output_paths(output):
  """(JSON path, Markdown path) for an output given as a .json file (the .md beside it),
  a folder (results.json and results.md in it) or a path prefix (PREFIX.json, PREFIX.md)."""
  if output.endswith('.json'):
    return output, output[:-len('.json')] + '.md'
  if output.endswith(('/', os.sep)) or os.path.isdir(output):
    return os.path.join(output, 'results.json'), os.path.join(output, 'results.md')
  return output + '.json', output + '.md'


def write_evaluation(output, results, settings, title='Robust accuracy (%)', notes=(),
                     warnings=(), **sections):
  """Writes an evaluation's JSON and Markdown (see `output_paths`); returns their paths.

  The JSON holds, for one model, its accuracies at the top level ("pgd20": 43.5, ...)
  with "model": its name; for several, {model: {attack: %}}. Then "settings",
  "warnings" (a list of strings) and any further `sections`, e.g. the masking checks.
  """
  json_path, markdown_path = output_paths(output)
  if len(results) == 1:
    [(name, row)] = results.items()
    document = {'model': name, **row}
  else:
    document = dict(results)
  document.update(settings=settings, warnings=list(warnings), **sections)
  _write(json_path, markdown_path, document,
         markdown_report(results, settings, title, notes, warnings))
  return json_path, markdown_path
