"""Robustness reports: one row per model, one column per attack, as the paper's tables.

Accuracies are in percent. `worst_case` is the accuracy on the examples that no
attack broke (the per-example worst case over every attack run): the number to
quote, since methods that shape input gradients can look robust to one attack
and not to another. An AutoAttack ensemble also gets a table of the accuracy after
each of its attacks and their times, and its failed sanity checks become warnings.
Only 'autoattack' is called AutoAttack: 'autoattack_fast' (APGD-CE and APGD-T alone) is
"AutoAttack (fast: APGD-CE, APGD-T)" in every heading, title and warning.
"""

import dataclasses
import json
import os

from igam_tf import attacks

# What igam_tf.evaluate runs unless told: the paper's columns and AutoAttack.
DEFAULT_ATTACKS = ('clean', 'fgsm', 'pgd20', 'autoattack')
# After the attacks' columns (in `AttackSpec.report_order`), always last: {column: heading}.
LAST_COLUMNS = {'worst_case': 'Worst case', 'worst_case_l2': 'Worst case (L2)'}


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Models evaluated under the same attacks.

  Attributes:
    accuracies: {model: {attack: accuracy %, 'worst_case': %}}, as the tables show it.
    autoattack_runs: {model: {ensemble ('autoattack' or 'autoattack_fast'):
      `attacks.AutoAttackResult`}} for the ensembles that ran.
  """
  accuracies: dict
  autoattack_runs: dict

  @property
  def warnings(self):
    """The AutoAttack sanity checks that failed, as '<model>: AutoAttack: <message>'
    ('<model>: AutoAttack (fast: APGD-CE, APGD-T): <message>' for the fast ensemble)."""
    return [f'{model}: {run.name}: {message}'
            for model, runs in self.autoattack_runs.items()
            for run in runs.values() for message in run.warnings]

  def autoattack_json(self):
    """{model: {ensemble: {'name': what it is called ('AutoAttack' for 'autoattack'
    only), 'accuracy_after': {attack: cumulative %}, 'seconds': {...},
    'warnings': [...]}}}."""
    return {model: {name: {'name': run.name,
                           'accuracy_after': run.accuracies,
                           'seconds': {k: round(v, 1) for k, v in run.seconds.items()},
                           'warnings': list(run.warnings)}
                    for name, run in runs.items()}
            for model, runs in self.autoattack_runs.items()}


def evaluate_models(models, dataset, attack_names, eps, *, restarts=1, num_examples=None,
                    seed=0, strategy=None, batch_size=100, progress=True, step_size=None,
                    l2_eps=None):
  """Evaluates {model name: classifier} on one dataset (a classifier: a Keras model or a
  callable images -> logits, e.g. a SavedModel's) under the same attacks (see
  `attacks.attack_results` for the arguments). Returns an `Evaluation`."""
  accuracies, runs = {}, {}
  for name, model in models.items():
    results = attacks.attack_results(model, dataset, attack_names, eps=eps, restarts=restarts,
                                     num_examples=num_examples, seed=seed, strategy=strategy,
                                     batch_size=batch_size, progress=progress,
                                     step_size=step_size, l2_eps=l2_eps)
    accuracies[name] = attacks.accuracies(results)
    ensembles = {attack: result.report for attack, result in results.items()
                 if isinstance(result.report, attacks.AutoAttackResult)}
    if ensembles:
      runs[name] = ensembles
  return Evaluation(accuracies, runs)


def _spec(column):
  """The `AttackSpec` of an attack's column, else None."""
  try:
    return attacks.parse_attack(column)
  except ValueError:
    return None


def columns(results):
  """The columns of `results` ({row: {column: value}}): the attacks in their specs'
  `report_order` (the paper's first), any others sorted, then the worst cases."""
  present = {column for row in results.values() for column in row}
  last = [c for c in LAST_COLUMNS if c in present]
  specs = {c: _spec(c) for c in present - set(last)}
  ordered = sorted((c for c, spec in specs.items() if spec),
                   key=lambda c: specs[c].report_order)
  return ordered + sorted(c for c, spec in specs.items() if not spec) + last


def markdown_table(results, first_column='Model'):
  cols = columns(results)
  lines = [f'| {first_column} | ' + ' | '.join(heading(c) for c in cols) + ' |',
           '|---|' + '---:|' * len(cols)]
  for name, row in results.items():
    lines.append(f'| {name} | ' + ' | '.join(
        f'{row[c]:.1f}' if c in row else '' for c in cols) + ' |')
  return '\n'.join(lines)


def heading(column):
  """A column's heading: an attack's display name, 'Worst case', or the column."""
  if column in LAST_COLUMNS:
    return LAST_COLUMNS[column]
  spec = _spec(column)
  return spec.display_name if spec else column


def autoattack_title(autoattack_runs):
  """'AutoAttack', 'AutoAttack (fast: APGD-CE, APGD-T)' or both, for the ensembles
  that ran."""
  names = dict.fromkeys(run.name for runs in autoattack_runs.values()
                        for run in runs.values())
  return ' and '.join(names)


def autoattack_table(autoattack_runs):
  """Markdown: per model and ensemble, the accuracy after each of its attacks (each
  attacks only the points the earlier ones left) and the seconds the ensemble took; a
  row of the fast ensemble names it after the model."""
  stages = list(dict.fromkeys(stage for runs in autoattack_runs.values()
                              for run in runs.values() for stage in run.after))
  lines = ['| Model | ' + ' | '.join(
      'Clean' if stage == 'clean' else f'+ {attacks.STAGE_NAMES[stage]}'
      for stage in stages) + ' | Seconds |', '|---|' + '---:|' * (len(stages) + 1)]
  for model, runs in autoattack_runs.items():
    for name, run in runs.items():
      label = model if name == 'autoattack' else f'{model}, {run.name}'
      cells = [f'{run.accuracies[stage]:.1f}' if stage in run.after else ''
               for stage in stages]
      lines.append(f'| {label} | ' + ' | '.join(cells) +
                   f' | {sum(run.seconds.values()):.0f} |')
  return '\n'.join(lines)


def markdown_report(results, settings, title='Robust accuracy (%)', notes=(), warnings=(),
                    autoattack_runs=None):
  """The table, then AutoAttack attack by attack, notes, warnings (e.g. of gradient
  masking) and settings."""
  lines = [f'# {title}', '', markdown_table(results), '']
  if autoattack_runs:
    lines += [f'## {autoattack_title(autoattack_runs)}, attack by attack', '',
              autoattack_table(autoattack_runs), '']
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


def write_report(output_dir, evaluation, settings, title='Robust accuracy (%)', notes=(),
                 warnings=()):
  """Writes `results.json` ({model: {attack: %}}, 'settings', 'warnings' and
  'autoattack_runs') and `results.md` for an `Evaluation`; returns the Markdown."""
  markdown = markdown_report(evaluation.accuracies, settings, title, notes, warnings,
                             evaluation.autoattack_runs)
  _write(os.path.join(output_dir, 'results.json'), os.path.join(output_dir, 'results.md'),
         {**evaluation.accuracies, 'settings': settings, 'warnings': list(warnings),
          'autoattack_runs': evaluation.autoattack_json()}, markdown)
  return markdown


def output_paths(output):
  """(JSON path, Markdown path) for an output given as a .json file (the .md beside it),
  a folder (results.json and results.md in it) or a path prefix (PREFIX.json, PREFIX.md)."""
  if output.endswith('.json'):
    return output, output[:-len('.json')] + '.md'
  if output.endswith(('/', os.sep)) or os.path.isdir(output):
    return os.path.join(output, 'results.json'), os.path.join(output, 'results.md')
  return output + '.json', output + '.md'


def write_evaluation(output, evaluation, settings, title='Robust accuracy (%)', notes=(),
                     warnings=(), **sections):
  """Writes an `Evaluation`'s JSON and Markdown (see `output_paths`); returns their paths.

  The JSON holds, for one model, its accuracies at the top level ("pgd20": 43.5,
  "autoattack": 40.1, ...) with "model": its name; for several, {model: {attack: %}}.
  Then "settings", "warnings" (a list of strings), "autoattack_runs" (see
  `Evaluation.autoattack_json`) and any further `sections`, e.g. the masking checks.
  """
  json_path, markdown_path = output_paths(output)
  results = evaluation.accuracies
  if len(results) == 1:
    [(name, row)] = results.items()
    document = {'model': name, **row}
  else:
    document = dict(results)
  document.update(settings=settings, warnings=list(warnings),
                  autoattack_runs=evaluation.autoattack_json(), **sections)
  _write(json_path, markdown_path, document,
         markdown_report(results, settings, title, notes, warnings,
                         evaluation.autoattack_runs))
  return json_path, markdown_path
