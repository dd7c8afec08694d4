r"""Evaluates classifiers' robustness: the paper's table, the worst case per example and
checks for gradient masking.

  python -m igam_tf.evaluate --saved_model=/tmp/igam --dataset=cifar10 --output=/tmp/igam_eval
  python -m igam_tf.evaluate --model_dir=runs/demo --dataset=digits --classes=5,6,7,8,9 \
      --epsilon=0.1 --output=runs/demo/evaluation.json
  python -m igam_tf.evaluate --checkpoint=madry_cifar10:models/adv_trained --num_examples=1000

The model is one of --saved_model (an export of igam_tf.export, attacked through its
serving_default signature alone), --model_dir (a trained model folder, or a folder of
them: every sub-folder with model.json or saved_model/ becomes a row of one table) or
--checkpoint (a MadryLab TF1 checkpoint). Accuracies are in percent; "worst case" is the
accuracy on the examples that no attack broke. Unless --masking_checks=false, the
checks of igam_tf/masking_checks.py run on the first --masking_examples examples and
print a WARNING line for each sign of gradient masking. --attacks=autoattack runs
AutoAttack's standard ensemble (JSON key "autoattack"): its accuracy after each attack
is printed and its sanity checks give WARNING lines too. --output writes the numbers,
the settings and the warnings as JSON, and a Markdown table beside it.
"""

import fractions
import os
from absl import app
from absl import flags

from igam_tf import attacks
from igam_tf import data
from igam_tf import distribution
from igam_tf import evaluation
from igam_tf import flag_groups
from igam_tf import masking_checks
from igam_tf import multi_worker
from igam_tf import model_sources
from igam_tf.settings import DeviceSettings

MODEL_FLAGS = ('saved_model', 'model_dir', 'checkpoint')


def parse_radius(text):
  """A radius given as a float or a fraction, e.g. '0.3' or '8/255'."""
  try:
    value = float(fractions.Fraction(text.strip()))
  except (ValueError, ZeroDivisionError) as e:
    raise ValueError(f'expected a number such as 0.03 or 8/255, got {text!r}') from e
  if value < 0:
    raise ValueError(f'expected a non-negative number, got {text!r}')
  return value


def _radius_validator(name, positive=True, at_most_one=True):
  """Registers a check of --`name`: a number or fraction, above 0 (or at least 0), at
  most 1 (the [0, 1] pixel scale) where it is an L-inf radius; empty passes (unset)."""
  def check(text):
    if not text:
      return True
    try:
      value = parse_radius(text)
    except ValueError as e:
      raise flags.ValidationError(f'--{name}: {e}') from None
    if (positive and value <= 0) or (at_most_one and value > 1):
      raise flags.ValidationError(
          f'--{name}={text} is outside {"(0" if positive else "[0"}, '
          f'{"1]" if at_most_one else "inf)"}: radii are on the [0, 1] pixel scale')
    return True
  flags.register_validator(name, check)


def define_flags():
  flags.DEFINE_string('saved_model', None, 'A SavedModel exported by igam_tf.export.')
  flags.DEFINE_string('model_dir', None, 'A trained model folder, or a folder whose sub-folders '
                      'with model.json or saved_model/ are each evaluated (one table).')
  flags.DEFINE_string('checkpoint', None, 'madry_mnist:PATH or madry_cifar10:PATH: a MadryLab '
                      'TF1 checkpoint folder or prefix.')
  flags.mark_flags_as_mutual_exclusive(MODEL_FLAGS, required=True)
  flags.DEFINE_string('dataset', 'cifar10', f'One of {data.VALID_SPECS} (see igam_tf/data.py).')
  flags.DEFINE_string('data_dir', None, 'Where TFDS datasets are prepared.')
  flags.DEFINE_string('split', 'test', 'The split to evaluate on.')
  flags.DEFINE_list('classes', [], 'Keep only these class ids, relabelled 0..K-1.')
  flags.DEFINE_integer('image_size', None, 'Resize images to this square size.')
  flags.DEFINE_list('attacks', list(evaluation.DEFAULT_ATTACKS),
                    'Attacks, e.g. clean,fgsm,pgd5,pgd10,pgd20,pgd50,pgd100,apgd_ce,apgd_dlr, '
                    'or the AutoAttack ensemble: autoattack (APGD-CE, APGD-T, FAB-T, Square); '
                    'autoattack_fast runs APGD-CE and APGD-T only, reported as "AutoAttack '
                    '(fast: APGD-CE, APGD-T)" (grammar in igam_tf/attacks/names.py).')
  flags.DEFINE_string('epsilon', '8/255', 'L-inf radius on the [0, 1] scale: a float or a '
                      'fraction such as 8/255.')
  flags.DEFINE_string('step_size', '', 'PGD step size (float or fraction); empty: epsilon / 4.')
  flags.DEFINE_string('l2_epsilon', '', 'L2 radius, needed only by *_l2 attacks.')
  flags.DEFINE_integer('restarts', 1, 'Random restarts of PGD and APGD.', lower_bound=1)
  flags.DEFINE_integer('num_examples', None, 'Evaluate the first this many (unset: all).',
                       lower_bound=1)
  flags.DEFINE_integer('batch_size', 100, 'Global batch size of the attacks.', lower_bound=1)
  flags.DEFINE_integer('seed', 0, 'Fixes every random start.')
  flag_groups.define_job_flags(DeviceSettings)  # --strategy, --cpu_replicas
  flags.DEFINE_string('output', None, 'Write the results as JSON and Markdown: a .json file '
                      '(the .md beside it), a folder, or a path prefix (PREFIX.json, PREFIX.md).')
  flags.DEFINE_bool('masking_checks', True, 'Check for gradient masking (see '
                    'igam_tf/masking_checks.py).')
  flags.DEFINE_integer('masking_examples', masking_checks.NUM_EXAMPLES,
                       'Examples the masking checks attack (at most --num_examples).',
                       lower_bound=1)
  flags.DEFINE_string('masking_large_epsilon', str(masking_checks.LARGE_EPSILON),
                      'The eps where accuracy must reach about 0%.')
  flags.DEFINE_float('masking_tolerance', masking_checks.TOLERANCE, 'Percentage points an '
                     'accuracy may rise before a masking check warns.', lower_bound=0)
  flags.DEFINE_string('transfer_from', None, 'A model folder, SavedModel or madry_*:PATH '
                      'checkpoint to craft transfer attacks on, for the masking checks.')
  for name in ('epsilon', 'step_size', 'masking_large_epsilon'):
    _radius_validator(name)
  _radius_validator('l2_epsilon', at_most_one=False)
  flag_groups.register_attack_names('attacks')


def _count(split, num_examples):
  """How many examples an evaluation of the first `num_examples` covers."""
  if split.num_examples is not None:
    return min(split.num_examples, num_examples or split.num_examples)
  dataset = split.dataset.take(num_examples) if num_examples else split.dataset
  return int(dataset.reduce(0, lambda count, _: count + 1))


def _sources(f):
  if f.saved_model:
    return {model_sources.default_name(f.saved_model): f.saved_model}
  if f.checkpoint:
    return {model_sources.default_name(f.checkpoint): f.checkpoint}
  return model_sources.model_folders(f.model_dir)


def _settings(f, examples, eps, step_size, l2_eps, large_eps, sources, masking_examples):
  settings = {'dataset': f.dataset, 'split': f.split, 'classes': [int(c) for c in f.classes],
              'image_size': f.image_size, 'examples': examples,
              'attacks': [attacks.parse_attack(a).name for a in f.attacks],
              'epsilon': eps, 'step_size': step_size, 'l2_epsilon': l2_eps,
              'restarts': f.restarts, 'seed': f.seed, 'batch_size': f.batch_size,
              'strategy': f.strategy, 'models': sources,
              'worst_case': 'accuracy on the examples that no attack broke'}
  if f.masking_checks:
    settings.update(masking_examples=masking_examples, masking_large_epsilon=large_eps,
                    masking_tolerance=f.masking_tolerance, transfer_from=f.transfer_from)
  return settings


def _load_models(sources, transfer_from, split, strategy):
  """({name: model_sources.Classifier}, the transfer source or None), checked to fit."""
  with strategy.scope():
    models = {name: model_sources.load(source, name) for name, source in sources.items()}
    transfer = model_sources.load(transfer_from) if transfer_from else None
  for classifier in list(models.values()) + ([transfer] if transfer else []):
    model_sources.check_fits(classifier, split.image_shape, split.num_classes)
  return models, transfer


def _print_findings(reports, autoattack_warnings):
  """An ok line per passed masking check (what was verified), then a WARNING line per
  failed one and per failed AutoAttack sanity check."""
  for name, report in reports.items():
    for finding in report.findings:
      if not finding.suspicious:
        print(f'ok: {name}: {finding.check}: {finding.message}')
  for name, report in reports.items():
    for message in report.warnings:
      print(f'WARNING: {name}: {message}')
  for warning in autoattack_warnings:
    print(f'WARNING: {warning}')


def _write_output(f, settings, accuracies, autoattack_runs, reports, quiet=False):
  """Writes --output; while models remain, as a partial table that says so."""
  evaluated = evaluation.Evaluation(accuracies, autoattack_runs)
  sources = settings['models']
  warnings = [f'{name}: {message}' for name, report in reports.items()
              for message in report.warnings] + list(evaluated.warnings)
  paths = evaluation.write_evaluation(
      f.output, evaluated, settings, title=f'Robust accuracy (%) on {f.dataset}:{f.split}',
      notes=['Worst case: accuracy on the examples that no attack broke.'] + (
          [f'Partial: {len(accuracies)} of {len(sources)} models evaluated so far.']
          if len(accuracies) < len(sources) else []),
      warnings=warnings,
      masking_checks={name: report.to_json() for name, report in reports.items()})
  if not quiet:
    print(f'Wrote {" and ".join(paths)}')


def run_evaluation(f):
  """Evaluates the models the flags `f` name; prints progress, the table and any
  warnings, and writes --output. Returns the table as Markdown."""
  eps = parse_radius(f.epsilon)
  step_size = parse_radius(f.step_size) if f.step_size else eps / 4
  l2_eps = parse_radius(f.l2_epsilon) if f.l2_epsilon else None
  large_eps = parse_radius(f.masking_large_epsilon)
  if f.masking_checks and large_eps <= eps:
    raise ValueError(f'--masking_large_epsilon ({large_eps}) must exceed --epsilon ({eps})')
  names = [attacks.parse_attack(a).name for a in f.attacks]  # bad names fail before loading
  if f.output:  # an output that cannot be written fails now, not after the attacks
    flag_groups.check_writable('output', f.output, os.path.dirname(
        os.path.abspath(evaluation.output_paths(f.output)[0])))
  devices = flag_groups.job_from_flags(DeviceSettings, f)
  strategy = distribution.get_strategy(devices.strategy, devices.cpu_replicas)
  split = data.load_dataset(f.dataset, f.split, data_dir=f.data_dir, image_size=f.image_size,
                            classes=f.classes)
  examples = _count(split, f.num_examples)
  masking_examples = min(f.masking_examples, examples)
  sources = _sources(f)
  models, transfer = _load_models(sources, f.transfer_from, split, strategy)
  settings = _settings(f, examples, eps, step_size, l2_eps, large_eps, sources=sources,
                       masking_examples=masking_examples)

  writes = f.output and multi_worker.is_chief(strategy)  # one worker of several writes
  order = names if 'clean' in names else ['clean'] + names
  print(f'Evaluating {len(models)} model(s) on {examples} examples of {f.dataset}:{f.split}, '
        f'L-inf eps {eps:.6g} (step {step_size:.6g}), {f.restarts} restart(s); attacks in '
        f'order: {", ".join(order)}.', flush=True)
  accuracies, autoattack_runs, reports = {}, {}, {}
  for i, (name, classifier) in enumerate(models.items(), 1):
    print(f'[{i}/{len(models)}] {name} ({classifier.kind}: {classifier.source})', flush=True)
    try:
      masking_checks.require_input_gradient(classifier.model, split)
      one_model = evaluation.evaluate_models(
          {name: classifier.model}, split, names, eps, restarts=f.restarts,
          num_examples=f.num_examples, seed=f.seed, strategy=strategy,
          batch_size=f.batch_size, step_size=step_size, l2_eps=l2_eps)
      accuracies.update(one_model.accuracies)
      autoattack_runs.update(one_model.autoattack_runs)
      if f.masking_checks:
        print(f'Gradient-masking checks for {name} on the first {masking_examples} examples:',
              flush=True)
        reports[name] = masking_checks.run_checks(
            classifier.model, split, eps, step_size=step_size, num_examples=masking_examples,
            large_epsilon=large_eps, tolerance=f.masking_tolerance,
            transfer_source=transfer.model if transfer else None,
            transfer_name=transfer.name if transfer else None, seed=f.seed, strategy=strategy,
            batch_size=f.batch_size)
    except attacks.AttackError as e:
      raise ValueError(f'{name}: {e}') from e
    if writes and i < len(models):  # the models done so far survive a later failure
      _write_output(f, settings, accuracies, autoattack_runs, reports, quiet=True)

  evaluated = evaluation.Evaluation(accuracies, autoattack_runs)
  table = evaluation.markdown_table(accuracies)
  print(f'\nAccuracy (%) on {examples} examples; worst case: the examples no attack broke.')
  print(table)
  if autoattack_runs:
    print(f'\n{evaluation.autoattack_title(autoattack_runs)}, attack by attack (accuracy % '
          'after each; each attacks only the points the earlier ones left):')
    print(evaluation.autoattack_table(autoattack_runs))
  _print_findings(reports, evaluated.warnings)
  if writes:
    _write_output(f, settings, accuracies, autoattack_runs, reports)
  return table


@flag_groups.reports_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  run_evaluation(flags.FLAGS)
  return 0


def run():
  """`python -m igam_tf.evaluate`, also the console script `igam-evaluate`
  (pyproject.toml)."""
  flag_groups.run_binary(__name__, define_flags, main)


if __name__ == '__main__':
  run()
