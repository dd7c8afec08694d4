"""Training on several replicas gives one device's weights, through the job functions and
the binaries, on a CPU split into two logical devices (--cpu_replicas=2).

Logical devices must be set before TensorFlow starts its devices, so each check runs in a
fresh process (the jobs in a script, the binaries as themselves). Optimizers are momentum
SGD: Adam's update divides tiny gradients by their own size, so it turns rounding noise
into whole steps and would hide real differences among false ones.
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from unittest import mock

import numpy as np
import tensorflow as tf

from igam_tf import distribution
from igam_tf import experiments
from igam_tf import model_io
from igam_tf import settings
from tests import teacher_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs each named job once on one device and once on two replicas, with the same global
# batch, and prints {job: [largest weight difference, largest weight, seconds default,
# seconds mirrored]}. argv: repository, then job names.
_JOBS_SCRIPT = textwrap.dedent('''
    import json, sys, tempfile, time
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from igam_tf import distribution, experiments, settings
    distribution.configure_cpu_replicas(2)

    root = tempfile.mkdtemp()
    data = settings.DataSettings('digits', classes=(0, 1, 2), batch_size=16,
                                 validation_split='', seed=3)
    sgd = settings.OptimizerSettings('momentum', 0.05, weight_decay=1e-3)
    # BN everywhere (synchronized across replicas), smooth for double backpropagation.
    resnet = settings.StudentSettings('madry_resnet', activation='softplus',
                                      filters=(4, 4, 8, 8), units_per_stage=1)
    cnn = settings.StudentSettings('simple_cnn', filters=(4, 8))
    base = settings.BaselineSettings

    def baseline(method, student, run, **options):
      return experiments.train_baseline(settings.BaselineJob(
          method, base(**options), student=student, optimizer=sgd, data=data, run=run))

    def finetune(source, run):
      return experiments.finetune_teacher(settings.FinetuneJob(source, data=data, run=run))

    def igam(update, run):
      return experiments.train_igam(settings.IGAMJob(
          f'{root}/teacher', igam=settings.IGAMSettings(
              adv_weight=1.0, diff_weight=1e3, disc_every=2, disc_update=update,
              disc_blocks=2, disc_filters=4, disc_optimizer=sgd),
          student=cnn, optimizer=sgd, data=data, run=run))

    jobs = {
        'standard': lambda r: baseline('standard', cnn, r),
        'pgd_at': lambda r: baseline('pgd_at', cnn, r, epsilon=0.1, pgd_steps=2,
                                     pgd_step_size=0.05),
        'grad_norm': lambda r: baseline('grad_norm', resnet, r, penalty_weight=1e3),
        'finetune': lambda r: finetune(f'{root}/source', r),
        'igam_accumulate': lambda r: igam('accumulate', r),
        'igam_current_batch': lambda r: igam('current_batch', r),
    }
    quick = lambda name: settings.RunSettings(f'{root}/{name}', 2, 2, verbose=0)
    names = sys.argv[2:]
    if any(name.startswith('igam') or name == 'finetune' for name in names):
      baseline('standard', cnn, quick('source'))  # a source for the teacher, one device
    if any(name.startswith('igam') for name in names):
      finetune(f'{root}/source', quick('teacher'))
    report = {}
    for name in names:
      weights, seconds = [], []
      for strategy in ('default', 'mirrored'):
        began = time.time()
        # 4 steps: IGAM's discriminator steps twice (disc_every=2), and the student
        # trains on against the discriminator it left.
        model = jobs[name](settings.RunSettings(
            f'{root}/{name}_{strategy}', 4, 4, verbose=0,
            devices=settings.DeviceSettings(strategy, cpu_replicas=2)))
        weights.append({w.path: w.numpy() for w in model.weights})
        seconds.append(round(time.time() - began, 1))
      one, two = weights
      report[name] = [max(float(np.abs(one[k] - two[k]).max()) for k in one),
                      max(float(np.abs(one[k]).max()) for k in one)] + seconds
    print(json.dumps(report))
''')


def _run_jobs(*names):
  completed = subprocess.run([sys.executable, '-c', _JOBS_SCRIPT, REPO, *names],
                             capture_output=True, text=True, timeout=600, check=False)
  if completed.returncode:
    raise AssertionError(f'the two-replica script failed:\n{completed.stderr[-3000:]}')
  return json.loads(completed.stdout.strip().splitlines()[-1])


class JobsOnTwoReplicasTest(tf.test.TestCase):
  """N replicas with global batch B train the weights one device trains with batch B."""

  def assert_same_weights(self, report):
    for name, (difference, largest, *unused_seconds) in report.items():
      self.assertGreater(largest, 0.1, name)
      self.assertLess(difference, 2e-5, f'{name}: weights differ by {difference}')

  def test_baselines(self):
    # grad_norm: a BN student (synchronized statistics, and double backpropagation
    # through them); pgd_at: per-example random starts.
    self.assert_same_weights(_run_jobs('standard', 'pgd_at', 'grad_norm'))

  def test_finetune_and_igam_with_disc_every(self):
    # IGAM with disc_every=2, both discriminator schedules.
    self.assert_same_weights(_run_jobs('finetune', 'igam_accumulate', 'igam_current_batch'))


class DistributionTest(tf.test.TestCase):

  def test_global_example_ids_one_replica(self):
    self.assertAllEqual(distribution.global_example_ids(4), [0, 1, 2, 3])

  def test_unknown_strategy_and_bad_replicas(self):
    with self.assertRaisesRegex(ValueError, '--strategy must be one of'):
      distribution.get_strategy('tpu')
    with self.assertRaisesRegex(ValueError, '--cpu_replicas must be at least 1'):
      distribution.configure_cpu_replicas(0)
    with self.assertRaisesRegex(ValueError, '--cpu_replicas=2 splits one machine'):
      distribution.get_strategy('multi_worker_mirrored', cpu_replicas=2)

  def test_a_bad_tf_config_is_named(self):
    for tf_config, message in (
        ('{"cluster": ', 'TF_CONFIG environment variable is not valid JSON'),
        ('{"task": {"type": "worker", "index": 0}}', 'must name the cluster'),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
         'names worker 1, but its cluster has 1 worker'),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
         'must name the cluster')):
      with mock.patch.dict(os.environ, {'TF_CONFIG': tf_config}):
        with self.assertRaisesRegex(ValueError, message):
          distribution.get_strategy('multi_worker_mirrored')

  def test_training_stream_restarts_the_same(self):
    # Keras iterates a distributed dataset once before training: every iterator over the
    # training stream must give the order the first one gives.
    data = settings.DataSettings('digits', classes=(0, 1), batch_size=8, augment='madry',
                                 pixel_noise=0.1, validation_split='', seed=1)
    _, stream, _ = experiments.load_training_data(data)
    first = [labels.numpy() for _, labels in stream.take(30)]
    again = [labels.numpy() for _, labels in stream.take(30)]
    self.assertAllEqual(first, again)
    self.assertNotAllEqual(first[0], first[25])  # a new order in the next epoch


class BinariesTest(tf.test.TestCase):

  def test_train_igam_mirrored_with_disc_every_5(self):
    # The paper's flagfiles set --disc_every=5; the teacher is made here on one device.
    root = tempfile.mkdtemp()
    teacher = teacher_fixtures.make_teacher(root)
    completed = subprocess.run(
        [sys.executable, '-m', 'igam_tf.train_igam', f'--teacher={teacher}',
         '--dataset=digits', '--classes=0,1,2', '--student_architecture=simple_cnn',
         '--student_filters=4,8', '--disc_blocks=2', '--disc_filters=4', '--disc_every=5',
         '--train_steps=10', '--checkpoint_every=5', '--batch_size=16',
         '--validation_split=', f'--model_dir={root}/igam', '--strategy=mirrored',
         '--cpu_replicas=2'],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(completed.returncode, 0, completed.stderr[-3000:])
    self.assertIn('IGAM student saved', completed.stdout)
    student, _ = model_io.load_model(f'{root}/igam')
    self.assertTrue(all(np.all(np.isfinite(w)) for w in student.get_weights()))

  def test_uneven_global_batch_is_refused(self):
    completed = subprocess.run(
        [sys.executable, '-m', 'igam_tf.train_baseline', '--method=standard',
         '--dataset=digits', '--student_architecture=simple_cnn', '--batch_size=15',
         '--train_steps=2', '--checkpoint_every=2', f'--model_dir={tempfile.mkdtemp()}/run',
         '--strategy=mirrored', '--cpu_replicas=2'],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(completed.returncode, 1, completed.stderr[-3000:])
    self.assertIn('ERROR: --batch_size=15 does not split evenly over the 2 replicas',
                  completed.stderr)


if __name__ == '__main__':
  tf.test.main()
