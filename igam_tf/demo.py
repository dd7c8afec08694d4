"""The offline demo: IGAM end to end on real handwritten digits, in minutes on a CPU.

  python -m igam_tf.demo --output_dir=runs/demo

scikit-learn's digits (bundled, so no download) are split into a source task
(--source_classes) and a target task (--target_classes). The demo
1. adversarially trains a robust teacher (the Madry MNIST CNN) on the source task,
   and a standard one the same way (as many steps) without attacks;
2. finetunes each one's logits on the target task (Section 4.1);
3. trains students of another architecture (the Madry ResNet, smooth activation) on
   natural target images: with IGAM from the robust teacher; and, as the paper's
   baselines and the controls it lacks, standard training, PGD adversarial
   training, the input-gradient norm penalty, and IGAM from the standard teacher;
4. evaluates every target-task model with the same attacks, runs the gradient-masking
   checks on each (with a transfer attack from the standard student), writes
   OUTPUT_DIR/results.{md,json} and OUTPUT_DIR/input_gradients.png (the paper's
   Figure 4 for these models), and exports each to OUTPUT_DIR/<name>/saved_model.
A rerun resumes any unfinished job and skips finished ones. With --seeds=0,1,2 the
whole demo runs once per seed (OUTPUT_DIR/seed_<N>) and OUTPUT_DIR/results_over_seeds.md
gives each model's mean and range: how far a run moves with its seed.
"""

import json
import os
import platform
import re
import time

from absl import flags
from absl import logging
import tensorflow as tf

from igam_tf import data
from igam_tf import distribution
from igam_tf import evaluation
from igam_tf import experiments
from igam_tf import flag_groups
from igam_tf import masking_checks
from igam_tf import model_io
from igam_tf import serving
from igam_tf import visualization

# The models of the table, in its order: target-task models only.
MODELS = ('teacher', 'igam', 'standard', 'pgd_at', 'grad_norm', 'igam_standard_teacher')


def define_flags():
  flags.DEFINE_string('output_dir', None, 'Where every model, export and the results go.')
  flags.DEFINE_list('source_classes', ['0', '1', '2', '3', '4'], 'Digits of the source task.')
  flags.DEFINE_list('target_classes', ['5', '6', '7', '8', '9'], 'Digits of the target task.')
  flags.DEFINE_float('epsilon', 0.1, 'L-inf radius (pixels in [0, 1]) for the robust '
                     'teacher, PGD-AT and every attack.')
  flags.DEFINE_integer('teacher_steps', 400, 'Steps of PGD-10 training of the robust teacher.')
  flags.DEFINE_integer('finetune_steps', 100, 'Steps of logit finetuning of each teacher.')
  flags.DEFINE_integer('student_steps', 300, 'Training steps of every student.')
  flags.DEFINE_integer('batch_size', 64, 'Batch size of every job.')
  flags.DEFINE_float('adv_weight', 1.0, 'IGAM\'s L_adv weight.')
  flags.DEFINE_float('diff_weight', 1e4, 'IGAM\'s L_diff weight, also the grad_norm '
                     'control\'s penalty weight (see the README on its scale).')
  flags.DEFINE_string('student_architecture', 'madry_resnet', 'Students\' architecture.')
  flags.DEFINE_list('student_filters', ['16', '16', '32', '64'], 'Students\' widths.')
  flags.DEFINE_integer('student_units_per_stage', 1, 'madry_resnet students: units per stage.')
  flags.DEFINE_string('student_activation', 'softplus', 'Students\' activation: a smooth one '
                      'has the second derivatives that IGAM and grad_norm train through.')
  flags.DEFINE_list('attacks', ['clean', 'fgsm', 'pgd20', 'autoattack'], 'Attacks of the '
                    'table; autoattack (the standard ensemble) also gets a table of its own.')
  flags.DEFINE_integer('masking_examples', 150, 'Test examples the gradient-masking checks '
                       'attack (0: skip the checks).')
  flags.DEFINE_integer('seed', 0, 'Seeds every job and attack.')
  flags.DEFINE_list('seeds', [], 'Run the whole demo once per seed, in OUTPUT_DIR/seed_<N>, '
                    'and write OUTPUT_DIR/results_over_seeds.{md,json}: each model\'s mean '
                    'and range over them. Unset: one run, with --seed, in OUTPUT_DIR.')
  flag_groups.define_strategy_flags()
  flags.mark_flag_as_required('output_dir')
  for name in ('teacher_steps', 'finetune_steps', 'student_steps', 'batch_size',
               'student_units_per_stage'):
    flag_groups.register_positive(name)
  flags.register_validator('masking_examples', lambda n: n >= 0,
                           message='--masking_examples must be 0 (no checks) or more')
  flags.register_validator('epsilon', lambda eps: 0 < eps <= 1,
                           message='--epsilon must be in (0, 1]: pixels are in [0, 1]')
  for name in ('adv_weight', 'diff_weight'):
    flags.register_validator(name, lambda w: w >= 0, message=f'--{name} must not be negative')
  flag_groups.register_attack_names('attacks')
  flags.register_validator('seeds', lambda seeds: all(re.fullmatch(r'-?\d+', s) for s in seeds),
                           message='--seeds takes integers, e.g. --seeds=0,1,2')


def _machine():
  """What the timings were measured on."""
  return (f'{platform.machine()} ({platform.processor() or "cpu"}), {os.cpu_count()} cores, '
          f'{len(tf.config.list_physical_devices("GPU"))} GPU(s), Python '
          f'{platform.python_version()}, TensorFlow {tf.__version__}')


def demo_settings(f, seed):
  """What a demo's results.json records of the flags it ran with."""
  return {'dataset': 'digits', 'source_classes': list(f.source_classes),
          'target_classes': list(f.target_classes), 'epsilon': f.epsilon,
          'pgd_step_size': f.epsilon / 4, 'batch_size': f.batch_size,
          'teacher_steps': f.teacher_steps, 'finetune_steps': f.finetune_steps,
          'student_steps': f.student_steps, 'adv_weight': f.adv_weight,
          'diff_weight': f.diff_weight, 'seed': seed,
          'student': (f'{f.student_architecture} {",".join(f.student_filters)} '
                      f'({f.student_units_per_stage} unit/stage) {f.student_activation}'),
          'teacher': 'madry_mnist (ReLU), PGD-10 trained on the source task',
          'attacks': list(f.attacks), 'masking_examples': f.masking_examples}


def run_demo(f, seed, root):
  """One whole demo with `seed`, in the folder `root`; returns its Markdown report."""
  start, timings = time.time(), {}
  root = root.rstrip('/')
  # Made before anything runs (a split CPU or several workers need that); every job
  # and the evaluation run under it.
  strategy = distribution.get_strategy(f.strategy, f.cpu_replicas)
  eps = f.epsilon
  adam = experiments.OptimizerSettings('adam', 1e-3, weight_decay=0.0)

  def task(classes):
    return experiments.DataSettings('digits', classes=tuple(int(c) for c in classes),
                                    batch_size=f.batch_size, validation_split='', seed=seed)

  def run(name, steps, job):
    began = time.time()
    logging.info('Demo job %s (%d steps)', name, steps)
    job(experiments.RunSettings(f'{root}/{name}', steps, steps, strategy=f.strategy,
                                cpu_replicas=f.cpu_replicas, verbose=2))
    timings[name] = round(time.time() - began, 1)

  source, target = task(f.source_classes), task(f.target_classes)
  teacher_spec = model_io.classifier_spec('madry_mnist')
  student = model_io.classifier_spec(
      f.student_architecture, activation=f.student_activation,
      filters=tuple(int(w) for w in f.student_filters) or None,
      units_per_stage=f.student_units_per_stage)
  pgd = lambda steps: experiments.BaselineSettings(epsilon=eps, pgd_steps=steps,
                                                   pgd_step_size=eps / 4)
  igam = experiments.IGAMSettings(adv_weight=f.adv_weight, diff_weight=f.diff_weight,
                                  disc_blocks=3, disc_filters=16, disc_optimizer=adam)

  run('robust_source', f.teacher_steps, lambda r: experiments.train_baseline(
      'pgd_at', teacher_spec, source, adam, pgd(10), r))
  # As many steps as the robust source, so the two controls differ only in robustness.
  run('standard_source', f.teacher_steps, lambda r: experiments.train_baseline(
      'standard', teacher_spec, source, adam, experiments.BaselineSettings(), r))
  run('teacher', f.finetune_steps, lambda r: experiments.finetune_teacher(
      f'{root}/robust_source', '', target, r))
  run('standard_teacher', f.finetune_steps, lambda r: experiments.finetune_teacher(
      f'{root}/standard_source', '', target, r))
  run('igam', f.student_steps, lambda r: experiments.train_igam(
      student, f'{root}/teacher', target, adam, igam, r))
  run('igam_standard_teacher', f.student_steps, lambda r: experiments.train_igam(
      student, f'{root}/standard_teacher', target, adam, igam, r))
  run('standard', f.student_steps, lambda r: experiments.train_baseline(
      'standard', student, target, adam, experiments.BaselineSettings(), r))
  run('pgd_at', f.student_steps, lambda r: experiments.train_baseline(
      'pgd_at', student, target, adam, pgd(7), r))
  run('grad_norm', f.student_steps, lambda r: experiments.train_baseline(
      'grad_norm', student, target, adam,
      experiments.BaselineSettings(penalty_weight=f.diff_weight), r))

  began = time.time()
  with strategy.scope():
    models = {name: model_io.load_model(f'{root}/{name}')[0] for name in MODELS}
  for name, model in models.items():
    serving.export_classifier(model, f'{root}/{name}/saved_model', (28, 28, 1),
                              overwrite=True)
  test = data.load_dataset('digits', 'test', classes=tuple(int(c) for c in f.target_classes))
  attacked = time.time()
  evaluated = evaluation.evaluate_models(models, test, f.attacks, eps, seed=seed,
                                         strategy=strategy)
  timings['attacks'] = round(time.time() - attacked, 1)
  warnings, checks_began = [], time.time()
  if f.masking_examples:
    for name, model in models.items():
      report = masking_checks.run_checks(
          model, test, eps, num_examples=f.masking_examples, seed=seed,
          transfer_source=None if name == 'standard' else models['standard'],
          transfer_name='the standard student')
      warnings += [f'{name}: {warning}' for warning in report.warnings]
  timings['masking_checks'] = round(time.time() - checks_began, 1)
  images, labels = next(iter(test.dataset.batch(8)))
  visualization.write_png(f'{root}/input_gradients.png',
                          visualization.gradient_grid(models, images, labels))
  timings['evaluation'] = round(time.time() - began, 1)
  timings['total'] = round(time.time() - start, 1)
  settings = {**demo_settings(f, seed), 'test_examples': test.num_examples, 'seconds': timings,
              'machine': _machine()}
  checked = (f'Gradient-masking checks (igam_tf/masking_checks.py, transfer attacks from the '
             f'standard student) ran on {f.masking_examples} examples: '
             + (f'{len(warnings)} warning(s) below.' if warnings else 'no warnings.')
             if f.masking_examples else 'Gradient-masking checks skipped.')
  if evaluated.autoattack_runs:
    checked += (f' AutoAttack\'s sanity checks: {len(evaluated.warnings)} warning(s)'
                + (' below.' if evaluated.warnings else '.'))
  warnings += evaluated.warnings
  return evaluation.write_report(
      root, evaluated, settings, title='IGAM demo on digits: target-task accuracy (%)',
      notes=DEMO_NOTES + tuple(ENSEMBLE_NOTES[a] for a in f.attacks if a in ENSEMBLE_NOTES)
      + (checked,), warnings=warnings)


DEMO_NOTES = (
    'teacher: the robust source model with its logits finetuned on the target task '
    '(the paper\'s FT baseline); igam: student trained with IGAM from it; '
    'igam_standard_teacher: the same from a standard (non-robust) teacher; grad_norm: '
    'the input-gradient norm penalty at IGAM\'s L_diff weight (IGAM with a zero teacher).',
    'Worst case: accuracy on the examples that no attack broke.',
)
ENSEMBLE_NOTES = {
    'autoattack': 'AutoAttack: the standard ensemble (APGD-CE, APGD-T, FAB-T, Square 5000 '
                  'queries), each attack on the points the earlier ones left; the second '
                  'table gives the accuracy after each.',
    'autoattack_fast': 'AutoAttack (fast: APGD-CE, APGD-T): not AutoAttack; APGD-T on the '
                       'points APGD-CE left; the second table gives the accuracy after each.',
}


def summarize_seeds(reports):
  """{seed: a demo's results.json} -> {model: {attack: {'mean', 'min', 'max'}}}, for the
  models and attacks every seed's report has."""
  tables = [{name: row for name, row in report.items()
             if name not in ('settings', 'warnings', 'autoattack_runs')}
            for report in reports.values()]
  summary = {}
  for name in tables[0]:
    if all(name in table for table in tables):
      attacks = [a for a in tables[0][name] if all(a in table[name] for table in tables)]
      summary[name] = {a: {'mean': round(sum(t[name][a] for t in tables) / len(tables), 2),
                           'min': min(t[name][a] for t in tables),
                           'max': max(t[name][a] for t in tables)} for a in attacks}
  return summary


def seeds_markdown(summary, seeds):
  attacks = evaluation.columns({name: dict.fromkeys(row) for name, row in summary.items()})
  lines = [f'# IGAM demo on digits over seeds {", ".join(map(str, seeds))}: mean (min-max), %',
           '', '| Model | ' + ' | '.join(evaluation.heading(a) for a in attacks) + ' |',
           '|---|' + '---:|' * len(attacks)]
  for name, row in summary.items():
    lines.append(f'| {name} | ' + ' | '.join(
        f'{row[a]["mean"]:.1f} ({row[a]["min"]:.1f}-{row[a]["max"]:.1f})' if a in row else ''
        for a in attacks) + ' |')
  return '\n'.join(lines) + '\n'


def _has_results(path, settings):
  """Whether `path` holds a finished demo's results with these settings (a rerun with
  --seeds reuses them, as it reuses trained models)."""
  if not os.path.exists(path):
    return False
  with open(path) as report:
    recorded = json.load(report).get('settings', {})
  if all(recorded.get(k) == v for k, v in settings.items()):
    logging.info('Reusing %s (same settings)', path)
    return True
  return False


def run_seeds(f, seeds):
  """The whole demo once per seed, then the summary over them; returns its Markdown."""
  root = f.output_dir.rstrip('/')
  reports = {}
  for seed in seeds:
    results = f'{root}/seed_{seed}/results.json'
    if not _has_results(results, demo_settings(f, seed)):
      run_demo(f, seed, f'{root}/seed_{seed}')
    with open(results) as report:
      reports[seed] = json.load(report)
  summary = summarize_seeds(reports)
  markdown = seeds_markdown(summary, seeds)
  with open(os.path.join(root, 'results_over_seeds.json'), 'w') as out:
    json.dump({'seeds': seeds, 'summary': summary}, out, indent=2)
  with open(os.path.join(root, 'results_over_seeds.md'), 'w') as out:
    out.write(markdown)
  return markdown


@flag_groups.reports_errors
def main(argv):
  del argv
  f = flags.FLAGS
  flag_groups.check_writable('output_dir', f.output_dir)  # before minutes of training
  if f.seeds:
    print(run_seeds(f, [int(s) for s in f.seeds]))
  else:
    print(run_demo(f, f.seed, f.output_dir))


def run():
  """`python -m igam_tf.demo`, also the console script `igam-demo`
  (pyproject.toml)."""
  flag_groups.run_binary(__name__, define_flags, main)


if __name__ == '__main__':
  run()
