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

import dataclasses
import json
import os
import platform
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
from igam_tf import multi_worker
from igam_tf import model_io
from igam_tf import serving
from igam_tf import settings
from igam_tf import visualization

# The models of the table, in its order: target-task models only.
MODELS = ('teacher', 'igam', 'standard', 'pgd_at', 'grad_norm', 'igam_standard_teacher')


def _epsilon_in_range(eps):
  if not 0 < eps <= 1:
    raise ValueError('must be in (0, 1]: pixels are in [0, 1]')


def _not_negative(value):
  if value < 0:
    raise ValueError('must not be negative')


def _digit_classes(classes):
  if len(classes) < 2 or any(not 0 <= c <= 9 for c in classes) or len(set(classes)) < len(classes):
    raise ValueError('takes two or more different digits, 0 to 9')


@dataclasses.dataclass
class DemoSettings(settings.Settings):
  """The demo's options; every job's settings follow from them (`run_demo`)."""
  output_dir: str = settings.option(None, 'Where every model, export and the results go.')
  source_classes: tuple[int, ...] = settings.option((0, 1, 2, 3, 4), 'Digits of the source '
                                                    'task.', check=_digit_classes)
  target_classes: tuple[int, ...] = settings.option((5, 6, 7, 8, 9), 'Digits of the target '
                                                    'task.', check=_digit_classes)
  epsilon: float = settings.option(0.1, 'L-inf radius (pixels in [0, 1]) for the robust '
                                   'teacher, PGD-AT and every attack.', check=_epsilon_in_range)
  teacher_steps: int = settings.option(400, 'Steps of PGD-10 training of the robust teacher.',
                                       check=settings.positive)
  finetune_steps: int = settings.option(100, 'Steps of logit finetuning of each teacher.',
                                        check=settings.positive)
  student_steps: int = settings.option(300, 'Training steps of every student.',
                                       check=settings.positive)
  batch_size: int = settings.option(64, 'Batch size of every job.', check=settings.positive)
  adv_weight: float = settings.option(1.0, 'IGAM\'s L_adv weight.', check=_not_negative)
  diff_weight: float = settings.option(1e4, 'IGAM\'s L_diff weight, also the grad_norm '
                                       'control\'s penalty weight (see the README on its '
                                       'scale).', check=_not_negative)
  # A smooth activation has the second derivatives that IGAM and grad_norm train through.
  student: settings.StudentSettings = settings.group(
      settings.StudentSettings, 'student_', 'the students', filters=(16, 16, 32, 64),
      units_per_stage=1, activation='softplus')
  attacks: tuple[str, ...] = settings.option(
      ('clean', 'fgsm', 'pgd20', 'autoattack'), 'Attacks of the table; autoattack (the '
      'standard ensemble) also gets a table of its own.')
  masking_examples: int = settings.option(150, 'Test examples the gradient-masking checks '
                                          'attack (0: skip the checks).', check=_not_negative)
  seed: int = settings.option(0, 'Seeds every job and attack.')
  seeds: tuple[int, ...] = settings.option(
      (), 'Run the whole demo once per seed, in OUTPUT_DIR/seed_<N>, and write '
      'OUTPUT_DIR/results_over_seeds.{md,json}: each model\'s mean and range over them. '
      'Unset: one run, with --seed, in OUTPUT_DIR.')
  devices: settings.DeviceSettings = settings.group(settings.DeviceSettings)


def define_flags():
  flag_groups.define_job_flags(DemoSettings)
  flags.adopt_module_key_flags(flag_groups)  # so that --help lists them
  flags.mark_flag_as_required('output_dir')
  flag_groups.register_attack_names('attacks')


def _machine():
  """What the timings were measured on."""
  return (f'{platform.machine()} ({platform.processor() or "cpu"}), {os.cpu_count()} cores, '
          f'{len(tf.config.list_physical_devices("GPU"))} GPU(s), Python '
          f'{platform.python_version()}, TensorFlow {tf.__version__}')


def recorded_settings(demo, seed):
  """What a demo's results.json records of its settings: its options by flag name, with
  this seed, less where it writes and how it runs; and what its flags do not say."""
  recorded = settings.by_flag(dataclasses.replace(demo, seed=seed))
  for unrecorded in ('output_dir', 'seeds', 'strategy', 'cpu_replicas'):
    del recorded[unrecorded]
  recorded.update(dataset='digits', pgd_step_size=demo.epsilon / 4,
                  teacher='madry_mnist (ReLU), PGD-10 trained on the source task')
  return json.loads(json.dumps(recorded))  # tuples as lists, as they come back from disk


def run_demo(demo, seed, root):
  """One whole demo (`demo`, a DemoSettings) with `seed`, in the folder `root`; returns
  its Markdown report."""
  start, timings = time.time(), {}
  root = root.rstrip('/')
  # Made before anything runs (a split CPU or several workers need that); every job
  # and the evaluation run under it.
  strategy = distribution.get_strategy(demo.devices.strategy, demo.devices.cpu_replicas)
  eps = demo.epsilon
  adam = settings.OptimizerSettings('adam', 1e-3, weight_decay=0.0)
  source, target = (settings.DataSettings('digits', classes=classes,
                                          batch_size=demo.batch_size, validation_split='',
                                          seed=seed)
                    for classes in (demo.source_classes, demo.target_classes))

  def run(name, steps, job_class, **job):
    began = time.time()
    logging.info('Demo job %s (%d steps)', name, steps)
    run_settings = settings.RunSettings(f'{root}/{name}', steps, steps,
                                        devices=demo.devices, verbose=2)
    train = {settings.FinetuneJob: experiments.finetune_teacher,
             settings.IGAMJob: experiments.train_igam,
             settings.BaselineJob: experiments.train_baseline}[job_class]
    train(job_class(**job, run=run_settings))
    timings[name] = round(time.time() - began, 1)

  madry_mnist = settings.StudentSettings('madry_mnist')
  pgd = lambda steps: settings.BaselineSettings(epsilon=eps, pgd_steps=steps,
                                                pgd_step_size=eps / 4)
  igam = settings.IGAMSettings(adv_weight=demo.adv_weight, diff_weight=demo.diff_weight,
                               disc_blocks=3, disc_filters=16, disc_optimizer=adam)
  students = dict(student=demo.student, optimizer=adam, data=target)

  run('robust_source', demo.teacher_steps, settings.BaselineJob, method='pgd_at',
      baseline=pgd(10), student=madry_mnist, optimizer=adam, data=source)
  # As many steps as the robust source, so the two controls differ only in robustness.
  run('standard_source', demo.teacher_steps, settings.BaselineJob, method='standard',
      student=madry_mnist, optimizer=adam, data=source)
  run('teacher', demo.finetune_steps, settings.FinetuneJob, source=f'{root}/robust_source',
      data=target)
  run('standard_teacher', demo.finetune_steps, settings.FinetuneJob,
      source=f'{root}/standard_source', data=target)
  run('igam', demo.student_steps, settings.IGAMJob, teacher=f'{root}/teacher', igam=igam,
      **students)
  run('igam_standard_teacher', demo.student_steps, settings.IGAMJob,
      teacher=f'{root}/standard_teacher', igam=igam, **students)
  run('standard', demo.student_steps, settings.BaselineJob, method='standard', **students)
  run('pgd_at', demo.student_steps, settings.BaselineJob, method='pgd_at', baseline=pgd(7),
      **students)
  run('grad_norm', demo.student_steps, settings.BaselineJob, method='grad_norm',
      baseline=settings.BaselineSettings(penalty_weight=demo.diff_weight), **students)

  with strategy.scope():
    models = {name: model_io.load_model(f'{root}/{name}')[0] for name in MODELS}
  # Every worker of a multi-worker run writes what follows; only the chief into root.
  with multi_worker.writable_folder(root, strategy) as output:
    markdown = _evaluate_and_report(demo, seed, models, output, strategy, timings, start)
  multi_worker.barrier(strategy)  # the other workers read the chief's results next
  return markdown


def _evaluate_and_report(demo, seed, models, root, strategy, timings, start):
  """The demo's models exported, attacked and checked, into `root`; returns the report
  written there. `timings` (seconds) gains the evaluation's and the total since `start`."""
  began, eps = time.time(), demo.epsilon
  for name, model in models.items():
    serving.export_classifier(model, f'{root}/{name}/saved_model', (28, 28, 1),
                              overwrite=True)
  test = data.load_dataset('digits', 'test', classes=demo.target_classes)
  attacked = time.time()
  evaluated = evaluation.evaluate_models(models, test, demo.attacks, eps, seed=seed,
                                         strategy=strategy)
  timings['attacks'] = round(time.time() - attacked, 1)
  warnings, checks_began = [], time.time()
  if demo.masking_examples:
    for name, model in models.items():
      report = masking_checks.run_checks(
          model, test, eps, num_examples=demo.masking_examples, seed=seed,
          transfer_source=None if name == 'standard' else models['standard'],
          transfer_name='the standard student')
      warnings += [f'{name}: {warning}' for warning in report.warnings]
  timings['masking_checks'] = round(time.time() - checks_began, 1)
  images, labels = next(iter(test.dataset.batch(8)))
  visualization.write_png(f'{root}/input_gradients.png',
                          visualization.gradient_grid(models, images, labels))
  timings['evaluation'] = round(time.time() - began, 1)
  timings['total'] = round(time.time() - start, 1)
  recorded = {**recorded_settings(demo, seed), 'test_examples': test.num_examples,
              'seconds': timings, 'machine': _machine()}
  checked = (f'Gradient-masking checks (igam_tf/masking_checks.py, transfer attacks from the '
             f'standard student) ran on {demo.masking_examples} examples: '
             + (f'{len(warnings)} warning(s) below.' if warnings else 'no warnings.')
             if demo.masking_examples else 'Gradient-masking checks skipped.')
  if evaluated.autoattack_runs:
    checked += (f' AutoAttack\'s sanity checks: {len(evaluated.warnings)} warning(s)'
                + (' below.' if evaluated.warnings else '.'))
  warnings += evaluated.warnings
  return evaluation.write_report(
      root, evaluated, recorded, title='IGAM demo on digits: target-task accuracy (%)',
      notes=DEMO_NOTES + tuple(ENSEMBLE_NOTES[a] for a in demo.attacks if a in ENSEMBLE_NOTES)
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


def run_seeds(demo, seeds):
  """The whole demo once per seed, then the summary over them; returns its Markdown."""
  root = demo.output_dir.rstrip('/')
  reports = {}
  for seed in seeds:
    results = f'{root}/seed_{seed}/results.json'
    if not _has_results(results, recorded_settings(demo, seed)):
      run_demo(demo, seed, f'{root}/seed_{seed}')
    with open(results) as report:
      reports[seed] = json.load(report)
  summary = summarize_seeds(reports)
  markdown = seeds_markdown(summary, seeds)
  strategy = distribution.get_strategy(demo.devices.strategy, demo.devices.cpu_replicas)
  if not multi_worker.is_chief(strategy):  # the chief writes the summary
    return markdown
  with open(os.path.join(root, 'results_over_seeds.json'), 'w') as out:
    json.dump({'seeds': seeds, 'summary': summary}, out, indent=2)
  with open(os.path.join(root, 'results_over_seeds.md'), 'w') as out:
    out.write(markdown)
  return markdown


@flag_groups.reports_errors
def main(argv):
  del argv
  demo = flag_groups.job_from_flags(DemoSettings, flags.FLAGS)
  flag_groups.check_writable('output_dir', demo.output_dir)  # before minutes of training
  if demo.seeds:
    print(run_seeds(demo, list(demo.seeds)))
  else:
    print(run_demo(demo, demo.seed, demo.output_dir))


def run():
  """`python -m igam_tf.demo`, also the console script `igam-demo`
  (pyproject.toml)."""
  flag_groups.run_binary(__name__, define_flags, main)


if __name__ == '__main__':
  run()
