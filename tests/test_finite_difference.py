"""--double_backprop=finite_difference against the exact computation: one step of IGAM and
of the gradient-norm penalty moves a smooth student's weights as second-order autodiff
does, and the binaries train with it."""

import json
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

import madry_models.resnet
from igam_tf.architectures import build_classifier
from igam_tf.baselines import GradientNormPenalty
from igam_tf.discriminator import build_discriminator
from igam_tf.igam import IGAM
from igam_tf.teacher import Teacher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.RandomState(0)
IMAGES = tf.constant(RNG.rand(16, 12, 12, 1), tf.float32)
LABELS = tf.constant(RNG.randint(0, 3, 16))


def student(architecture):
  """Smooth (softplus), so that its input gradients have useful second derivatives."""
  if architecture == 'simple_cnn':
    return build_classifier('simple_cnn', 3, (12, 12, 1), activation='softplus', filters=(8, 8))
  return build_classifier('madry_resnet', 3, (12, 12, 1), activation='softplus',
                          filters=(4, 4, 8, 8), units_per_stage=1)


def igam(architecture, double_backprop, weight=1e3):
  keras.utils.set_random_seed(0)  # the same models, whatever the computation
  teacher = Teacher(build_classifier('simple_cnn', 3, (12, 12, 1), filters=(4,)), 3, '')
  teacher(IMAGES[:1])
  return IGAM(student(architecture), teacher, build_discriminator(2, 4),
              adv_weight=weight / 1e3, diff_weight=weight, double_backprop=double_backprop)


def grad_norm(architecture, double_backprop, weight=1e6):
  keras.utils.set_random_seed(0)
  return GradientNormPenalty(student(architecture), penalty_weight=weight,
                             double_backprop=double_backprop)


def update(model):
  """The student's weight change in one SGD step at rate 1: minus its gradient."""
  classifier = model.student if isinstance(model, IGAM) else model.classifier
  if isinstance(model, IGAM):
    model.compile(keras.optimizers.SGD(1.0), keras.optimizers.SGD(0.0))
  else:
    model.compile(optimizer=keras.optimizers.SGD(1.0))
  before = [w.numpy() for w in classifier.trainable_weights]
  model.train_on_batch(IMAGES, LABELS)
  return np.concatenate([(b - w.numpy()).ravel()
                         for b, w in zip(before, classifier.trainable_weights)])


class FiniteDifferenceTest(tf.test.TestCase):

  def test_one_step_moves_a_smooth_student_as_the_exact_computation_does(self):
    for method in (igam, grad_norm):
      with self.subTest(method.__name__):
        exact = update(method('simple_cnn', 'exact'))
        finite_difference = update(method('simple_cnn', 'finite_difference'))
        error = np.linalg.norm(finite_difference - exact) / np.linalg.norm(exact)
        self.assertLess(error, 0.02)
        # The terms' own part of the step is far larger than that error.
        without_terms = update(method('simple_cnn', 'exact', weight=0.0))
        self.assertGreater(np.linalg.norm(exact - without_terms) / np.linalg.norm(exact),
                           10 * error)

  def test_with_batch_norm_it_takes_the_true_derivative_of_the_batch_statistics(self):
    # tf.nn.moments (Madry's BN, as the original TF1 code) stops the gradient through the
    # mean inside the variance: exact first derivatives, other second derivatives. The
    # finite difference differentiates BN as it computes; so it agrees with exact
    # autodiff through moments that keep that gradient.
    def true_moments(self, inputs, mask):
      del self, mask
      mean = tf.reduce_mean(inputs, [0, 1, 2])
      return mean, tf.reduce_mean(tf.square(inputs - mean), [0, 1, 2])
    finite_difference = update(igam('madry_resnet', 'finite_difference'))
    exact = update(igam('madry_resnet', 'exact'))
    with tf.compat.v1.test.mock.patch.object(madry_models.resnet.BatchNorm, '_moments',
                                             true_moments):
      exact_true_moments = update(igam('madry_resnet', 'exact'))
    self.assertLess(np.linalg.norm(finite_difference - exact_true_moments)
                    / np.linalg.norm(exact_true_moments), 0.02)
    self.assertGreater(np.linalg.norm(finite_difference - exact) / np.linalg.norm(exact), 0.05)

  def test_the_binary_trains_with_it(self):
    model_dir = os.path.join(tempfile.mkdtemp(), 'grad_norm')
    result = subprocess.run(
        [sys.executable, '-m', 'igam_tf.train_baseline', '--method=grad_norm',
         '--double_backprop=finite_difference', '--dataset=digits', '--classes=0,1,2',
         '--batch_size=16', '--student_architecture=simple_cnn', '--student_filters=4,8',
         '--student_activation=softplus', '--validation_split=', '--train_steps=2',
         '--checkpoint_every=2', f'--model_dir={model_dir}'],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(model_dir, 'run_config.json')) as f:
      self.assertEqual(json.load(f)['baseline']['double_backprop'], 'finite_difference')


if __name__ == '__main__':
  tf.test.main()
