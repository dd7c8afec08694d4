"""The baselines' options that follow the paper's schedule or Madry's code."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

from igam_tf import baselines
from igam_tf.architectures import build_classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batch(size=8, seed=0):
  rng = np.random.RandomState(seed)
  return (tf.constant(rng.rand(size, 12, 12, 3).astype(np.float32)),
          tf.constant(rng.randint(0, 3, size)))


def resnet(seed=0):
  keras.utils.set_random_seed(seed)
  return build_classifier('madry_resnet', 3, (12, 12, 3), activation='gelu',
                          filters=(4, 4, 8, 8), units_per_stage=1)


class BaselinesTest(tf.test.TestCase):

  def test_gradient_norm_penalty_starts_at_its_step(self):
    images, labels = batch()
    model = baselines.GradientNormPenalty(resnet(), penalty_weight=1e6, penalty_start_step=2)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    for step in range(4):
      # Before its step the penalty's graph (input gradients) is not even built.
      with mock.patch.object(baselines, 'objective_and_input_gradients',
                             side_effect=AssertionError('input gradients')) if step < 2 \
          else contextlib.nullcontext():
        logs = model.train_on_batch(images, labels, return_dict=True)
      model.reset_metrics()
      if step < 2:
        self.assertAllClose(logs['loss'], logs['xent'])
      else:
        self.assertGreater(logs['loss'], logs['xent'] + 1e-4)

  def test_pgd_crafted_with_batch_statistics_changes_no_variable(self):
    images, labels = batch()
    crafted = {}
    for pgd_bn in ('moving', 'batch'):
      classifier = resnet()
      model = baselines.PGDAdversarialTraining(classifier, epsilon=0.1, step_size=0.05,
                                               steps=3, pgd_bn=pgd_bn)
      model.compile(optimizer=keras.optimizers.SGD(0.01))
      before = [v.numpy().copy() for v in classifier.variables]
      crafted[pgd_bn] = model.training_images(images, labels).numpy()
      for b, a in zip(before, classifier.variables):
        self.assertAllEqual(b, a.numpy())
    # Fresh BN statistics (mean 0, variance 1) are not the batch's: other examples.
    self.assertNotAllClose(crafted['moving'], crafted['batch'])
    self.assertLessEqual(np.max(np.abs(crafted['batch'] - images.numpy())), 0.1 + 1e-6)

  def test_batch_statistics_need_a_model_that_has_them(self):
    with_bn = keras.Sequential([keras.layers.Conv2D(2, 3), keras.layers.BatchNormalization(),
                                keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    model = baselines.PGDAdversarialTraining(with_bn, epsilon=0.1, step_size=0.05, steps=1,
                                             pgd_bn='batch')
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    with self.assertRaisesRegex(ValueError, 'no batch-statistics mode'):
      model.training_images(*batch())
    with self.assertRaisesRegex(ValueError, '--pgd_bn must be one of'):
      baselines.PGDAdversarialTraining(with_bn, epsilon=0.1, step_size=0.05, steps=1,
                                       pgd_bn='train')


class BatchStatisticsBinaryTest(tf.test.TestCase):
  """--pgd_bn=batch and --teacher_bn=batch through the binaries, as a user runs them."""

  def test_binaries_train_with_batch_statistics(self):
    root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, root, ignore_errors=True)
    common = ['--dataset=digits', '--batch_size=16', '--train_steps=2', '--checkpoint_every=2',
              '--validation_split=']
    student = ['--student_architecture=madry_resnet', '--student_filters=4,4,8,8',
               '--student_units_per_stage=1']
    steps = [
        ('train_baseline', student + ['--method=pgd_at', '--pgd_bn=batch', '--classes=0,1,2',
                            '--epsilon=0.1', '--pgd_step_size=0.05', f'--model_dir={root}/src']),
        ('finetune_teacher', [f'--source={root}/src', '--teacher_bn=batch', '--classes=5,6,7',
                              f'--model_dir={root}/teacher']),
        ('train_igam', student + [f'--teacher={root}/teacher', '--teacher_bn=batch', '--classes=5,6,7',
                        f'--model_dir={root}/igam']),
    ]
    for binary, argv in steps:
      result = subprocess.run(
          [sys.executable, '-m', f'igam_tf.{binary}', *common, *argv], cwd=REPO,
          capture_output=True, text=True, timeout=300,
          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
      self.assertEqual(result.returncode, 0, f'{binary}: {result.stderr[-3000:]}')
    with open(os.path.join(root, 'teacher', 'model.json')) as f:
      self.assertEqual(json.load(f)['batch_norm'], 'batch')
    for run, key, value in (('src', 'baseline', 'batch'), ('igam', 'igam', 'batch')):
      with open(os.path.join(root, run, 'run_config.json')) as f:
        config = json.load(f)
      self.assertEqual(config[key]['pgd_bn' if run == 'src' else 'teacher_bn'], value)
    self.assertTrue(os.path.exists(os.path.join(root, 'igam', 'model.json')))


if __name__ == '__main__':
  tf.test.main()
