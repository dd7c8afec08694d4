"""Attacks: threat-model bounds, analytic optima, strength, restarts, the bounds check,
distribution, seeds and compilation, and APGD's step-size halving against a line-by-line
transcription of the authors' code (autopgd_base.py)."""

import os
import textwrap
from unittest import mock

from absl.testing import parameterized
import keras
import numpy as np
import tensorflow as tf

from igam_tf import attacks
from igam_tf.attacks import autopgd
from igam_tf.attacks import ops
from igam_tf.attacks import pgd
from igam_tf.data import load_dataset
from igam_tf.data import make_pipeline
from tests.attack_fixtures import MAX_TIED_PIXELS
from tests.attack_fixtures import TWO_CPU_PRELUDE
from tests.attack_fixtures import distances
from tests.attack_fixtures import edge_images
from tests.attack_fixtures import run_on_two_cpus
from tests.attack_fixtures import tied_pixel_fraction
from tests.attack_fixtures import tiny_cnn

TOLERANCE = 1e-6


def linear_model(weights, bias):
  """Two logits, affine in the flattened image."""
  model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(2)])
  model.layers[-1].set_weights([weights, bias])
  return model


def margins(model, images, labels):
  logits = np.asarray(model(images, training=False), np.float64)
  true = logits[np.arange(len(labels)), labels]
  return true - logits[np.arange(len(labels)), 1 - labels]


class ParseAttackTest(parameterized.TestCase):

  @parameterized.parameters(
      ('clean', attacks.AttackSpec('clean', 'clean')),
      ('fgsm', attacks.AttackSpec('fgsm', 'fgsm', steps=1)),
      ('pgd20', attacks.AttackSpec('pgd20', 'pgd', 'linf', 'ce', 20, True)),
      ('pgd7_dlr_l2', attacks.AttackSpec('pgd7_dlr_l2', 'pgd', 'l2', 'dlr', 7, True)),
      ('apgd_ce', attacks.AttackSpec('apgd_ce', 'apgd', 'linf', 'ce', 100, True)),
      ('apgd50_dlr_l2', attacks.AttackSpec('apgd50_dlr_l2', 'apgd', 'l2', 'dlr', 50, True)),
  )
  def test_parses(self, name, expected):
    self.assertEqual(attacks.parse_attack(name), expected)

  def test_every_listed_attack_parses(self):
    for name in attacks.ATTACKS + attacks.DEFAULT_ATTACKS:
      self.assertEqual(attacks.parse_attack(name).name, name)

  @parameterized.parameters('pgd', 'pgdx', 'fgsm_l2', 'clean_l2', 'apgd', 'apgd_xent', 'cw',
                            'pgd20_linf', 'pgd20_l2_dlr')
  def test_rejects(self, name):
    with self.assertRaisesRegex(ValueError, 'Unknown attack'):
      attacks.parse_attack(name)

  @parameterized.parameters('pgd0', 'apgd0_ce', 'apgd0_t', 'fab0_t', 'square0')
  def test_rejects_zero_steps(self, name):
    with self.assertRaisesRegex(ValueError, f"'{name}' takes no step at all"):
      attacks.parse_attack(name)

  def test_default_step_is_a_quarter_of_eps(self):
    self.assertAlmostEqual(attacks.parse_attack('pgd20').default_step_size(8 / 255), 2 / 255)


class LossAndScheduleTest(tf.test.TestCase):

  def test_dlr_loss(self):
    logits = tf.constant([[3.0, 1.0, 0.0, -1.0], [0.5, 2.5, 1.5, 0.0]])
    labels = tf.constant([0, 0], tf.int64)
    expected = [-(3 - 1) / (3 - 0), -(0.5 - 2.5) / (2.5 - 0.5)]
    self.assertAllClose(attacks.per_example_loss(logits, labels, 'dlr'), expected)

  def test_dlr_needs_three_classes(self):
    with self.assertRaisesRegex(ValueError, '3 classes'):
      attacks.per_example_loss(tf.zeros((1, 2)), tf.constant([0], tf.int64), 'dlr')

  def test_apgd_checkpoints_follow_the_paper(self):
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 of 100 iterations.
    first, decrement, minimum = (int(v) for v in autopgd.checkpoint_schedule(100))
    checkpoints, interval = [first], first
    while True:
      interval = max(interval - decrement, minimum)
      if checkpoints[-1] + interval > 100:
        break
      checkpoints.append(checkpoints[-1] + interval)
    self.assertEqual(checkpoints, [22, 41, 57, 70, 80, 87, 93, 99])


def reference_schedule(n_iter):
  """autopgd_base.py's init_hyperparam: (n_iter_2, n_iter_min, size_decr)."""
  return (max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1),
          max(int(0.03 * n_iter), 1))


def reference_check_oscillation(x, j, k, k3):
  """autopgd_base.py's check_oscillation, numpy for torch (x[-1] wraps around alike)."""
  t = np.zeros(x.shape[1])
  for counter5 in range(k):
    t += (x[j - counter5] > x[j - counter5 - 1]).astype(np.float64)
  return (t <= k * k3).astype(np.float64)


def reference_halvings(start_loss, iterate_losses, rho=0.75):
  """Where the authors' APGD (autopgd_base.py, attack_single_run, L-inf) halves the step
  of each example, given the losses of its iterates: its bookkeeping transcribed line by
  line (loss_steps, loss_best, counter3, k, loss_best_last_check, reduced_last_check).

  Args:
    start_loss: float [B], the loss at the random start.
    iterate_losses: float [n_iter, B], the loss of iterate i (their `loss_steps[i]`).

  Returns:
    bool [n_iter, B]: whether the step is halved after iterate i.
  """
  iterate_losses = np.asarray(iterate_losses, np.float64)
  n_iter = len(iterate_losses)
  n_iter_2, n_iter_min, size_decr = reference_schedule(n_iter)
  loss_steps = np.zeros_like(iterate_losses)
  loss_best = np.array(start_loss, np.float64)
  k, counter3 = n_iter_2, 0
  loss_best_last_check = loss_best.copy()
  reduced_last_check = np.ones_like(loss_best)
  halved = np.zeros(iterate_losses.shape, bool)
  for i in range(n_iter):
    y1 = iterate_losses[i]
    loss_steps[i] = y1
    loss_best = np.where(y1 > loss_best, y1, loss_best)
    counter3 += 1
    if counter3 == k:
      fl_oscillation = reference_check_oscillation(loss_steps, i, k, rho)
      fl_reduce_no_impr = (1. - reduced_last_check) * (
          loss_best_last_check >= loss_best).astype(np.float64)
      fl_oscillation = np.maximum(fl_oscillation, fl_reduce_no_impr)
      reduced_last_check = fl_oscillation.copy()
      loss_best_last_check = loss_best.copy()
      halved[i] = fl_oscillation > 0
      k = max(k - size_decr, n_iter_min)
      counter3 = 0
  return halved


def our_halvings(start_loss, iterate_losses, rho=0.75):
  """The same, from autopgd.step_size_state and step_size_update."""
  iterate_losses = tf.constant(iterate_losses, tf.float32)
  steps = len(iterate_losses)
  best = tf.constant(start_loss, tf.float32)
  state = autopgd.step_size_state(best, steps)
  halved = []
  for loss in iterate_losses:
    best = tf.where(loss > best, loss, best)
    halve, state = autopgd.step_size_update(state, loss, best, steps, rho)
    halved.append(halve.numpy())
  return np.array(halved)


def reference_apgd_linf(model, images, labels, eps, n_iter, start, loss, rho=0.75):
  """The authors' attack_single_run (L-inf, autopgd_base.py) transcribed line by line in
  numpy (float32, as theirs), from a given start point; the model's losses and gradients
  come from ops.loss_gradient. Returns (x_best, acc, loss_best, x_best_adv) as
  theirs does."""
  x = np.asarray(images, np.float32)
  y = tf.constant(labels, tf.int64)
  eps = np.float32(eps)

  def loss_and_gradient(x_adv):
    losses, gradient, logits = ops.loss_gradient(model, tf.constant(x_adv), y, loss)
    return logits.numpy(), losses.numpy(), gradient.numpy()

  x_adv = np.clip(np.asarray(start, np.float32), 0., 1.)
  x_best, x_best_adv = x_adv.copy(), x_adv.copy()
  loss_steps = np.zeros([n_iter, len(x)], np.float32)
  logits, loss_indiv, grad = loss_and_gradient(x_adv)
  grad_best = grad.copy()
  acc = logits.argmax(1) == labels
  loss_best = loss_indiv.copy()
  step_size = np.float32(2.) * eps * np.ones([len(x), 1, 1, 1], np.float32)
  x_adv_old = x_adv.copy()
  n_iter_2, n_iter_min, size_decr = reference_schedule(n_iter)
  k, counter3 = n_iter_2, 0
  loss_best_last_check = loss_best.copy()
  reduced_last_check = np.ones_like(loss_best)
  for i in range(n_iter):
    grad2 = x_adv - x_adv_old
    x_adv_old = x_adv.copy()
    a = np.float32(0.75 if i > 0 else 1.0)
    x_adv_1 = x_adv + step_size * np.sign(grad)
    x_adv_1 = np.clip(np.minimum(np.maximum(x_adv_1, x - eps), x + eps), 0., 1.)
    x_adv_1 = np.clip(np.minimum(np.maximum(
        x_adv + (x_adv_1 - x_adv) * a + grad2 * (np.float32(1.) - a), x - eps), x + eps),
                      0., 1.)
    x_adv = x_adv_1
    logits, loss_indiv, grad = loss_and_gradient(x_adv)
    pred = logits.argmax(1) == labels
    acc = acc & pred
    x_best_adv[~pred] = x_adv[~pred]
    y1 = loss_indiv.copy()
    loss_steps[i] = y1
    ind = y1 > loss_best
    x_best[ind] = x_adv[ind]
    grad_best[ind] = grad[ind]
    loss_best[ind] = y1[ind]
    counter3 += 1
    if counter3 == k:
      fl_oscillation = reference_check_oscillation(loss_steps, i, k, rho)
      fl_reduce_no_impr = (1. - reduced_last_check) * (
          loss_best_last_check >= loss_best).astype(np.float64)
      fl_oscillation = np.maximum(fl_oscillation, fl_reduce_no_impr)
      reduced_last_check = fl_oscillation.copy()
      loss_best_last_check = loss_best.copy()
      halve = fl_oscillation > 0
      step_size[halve] /= 2.
      x_adv[halve] = x_best[halve]
      grad[halve] = grad_best[halve]
      k = max(k - size_decr, n_iter_min)
      counter3 = 0
  return x_best, acc, loss_best, x_best_adv


class StepSizeBookkeepingTest(parameterized.TestCase, tf.test.TestCase):
  """APGD halves its step where the authors' code does (autopgd_base.py)."""

  def test_each_iterate_is_compared_with_the_one_before_it(self):
    # 10 iterations: checkpoints after iterates 1, 2, 3, ..., 9 (intervals 2, 1, 1, ...).
    # The step halves after iterate 2 (2.5 < 3.0) and the next step restarts from the
    # best point (loss 3.0). Iterate 3 (2.8) is compared with iterate 2 (2.5): an
    # increase, so no halving after it. The old bookkeeping compared it with the best
    # loss it had restarted from (3.0), saw no increase and halved again after iterate 3.
    losses = [[2.0], [3.0], [2.5], [2.8], [3.5], [3.6], [3.6], [3.7], [3.0], [3.1]]
    expected = [False, False, True, False, False, False, True, False, True, False]
    self.assertAllEqual(reference_halvings([1.0], losses)[:, 0], expected)
    self.assertAllEqual(our_halvings([1.0], losses)[:, 0], expected)

  def test_the_first_iterate_is_compared_with_zero(self):
    # Their first count reads loss_steps[-1], a row still zero: the first iterate counts
    # as an increase when its loss is positive, whatever the start's loss. Here (10
    # iterations: the first checkpoint after iterate 1) it falls below the start
    # (0.9 < 1.0) and still counts: 2 increases > 0.75 * 2, no halving. (Compared with
    # the start's loss it would count once, 1 <= 1.5, and halve.)
    losses = [[0.9], [1.2], [1.3], [1.4], [1.5], [1.6], [1.7], [1.8], [1.9], [2.0]]
    self.assertFalse(reference_halvings([1.0], losses)[1, 0])
    self.assertFalse(our_halvings([1.0], losses)[1, 0])
    # A negative first loss (DLR on a correct point) never counts: 1 <= 1.5, halved.
    negative = np.array(losses) - 2.1
    self.assertTrue(reference_halvings([-2.0], negative)[1, 0])
    self.assertTrue(our_halvings([-2.0], negative)[1, 0])

  @parameterized.parameters(5, 10, 23, 100)
  def test_random_losses_halve_as_the_authors_code(self, steps):
    rng = np.random.RandomState(steps)
    start = rng.normal(size=30)
    losses = np.concatenate([
        np.cumsum(rng.normal(0.05, 1.0, (steps, 10)), axis=0),  # a noisy ascent
        rng.randint(-2, 3, (steps, 10)).astype(float),  # many ties
        -np.abs(rng.normal(size=(steps, 10)))], axis=1)  # negative, as DLR
    reference = reference_halvings(start, losses)
    self.assertTrue(reference.any() and not reference.all())
    self.assertAllEqual(our_halvings(start, losses), reference)

  @parameterized.parameters('ce', 'dlr')
  def test_apgd_follows_the_authors_code_step_by_step(self, loss):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(32, activation='relu'),
                              keras.layers.Dense(5)])
    images = np.random.RandomState(4).uniform(0, 1, (32, 6, 6, 1)).astype(np.float32)
    labels = np.argmax(model(images), axis=1)
    eps, steps, seed = 0.05, 30, 7
    ids = tf.range(32, dtype=tf.int64)
    noise = ops.per_example_noise(tf.constant(images), ops.example_seeds(seed, 0, ids),
                                  'uniform')
    scale = tf.reduce_max(tf.abs(noise), axis=[1, 2, 3], keepdims=True)
    start = (images + eps * noise / (scale + 1e-12)).numpy()  # the same random start
    x_best, acc, loss_best, x_best_adv = reference_apgd_linf(model, images, labels, eps,
                                                             steps, start, loss)
    self.assertBetween(acc.mean(), 0.1, 0.9)  # some broken, some not
    expected = np.where(acc[:, None, None, None], x_best, x_best_adv)
    # Eagerly, as the transcription: a compiled graph may round the DLR loss differently
    # in the last bit, and near-ties then go the other way.
    ours = autopgd.apgd_core(model, tf.constant(images), tf.constant(labels, tf.int64),
                             tf.constant(eps), tf.constant(steps), tf.constant(1),
                             tf.constant(seed, tf.int64), ids, tf.constant(0.75),
                             norm='linf', loss=loss)
    self.assertAllEqual(ours, expected)


# name, attack(model, images, labels), eps, norm
BATCH_ATTACKS = (
    ('fgsm', lambda m, x, y: attacks.fgsm(m, x, y, 0.1), 0.1, 'linf'),
    ('pgd_linf', lambda m, x, y: attacks.pgd_linf(m, x, y, 0.1, 0.05, 5), 0.1, 'linf'),
    ('pgd_linf_restarts', lambda m, x, y: attacks.pgd_linf(m, x, y, 0.1, 0.05, 3, restarts=2),
     0.1, 'linf'),
    ('pgd_l2', lambda m, x, y: attacks.pgd_l2(m, x, y, 0.5, 0.2, 5), 0.5, 'l2'),
    ('apgd_ce', lambda m, x, y: attacks.apgd(m, x, y, 0.1, steps=10), 0.1, 'linf'),
    ('apgd_dlr', lambda m, x, y: attacks.apgd(m, x, y, 0.1, steps=10, loss='dlr', restarts=2),
     0.1, 'linf'),
    ('apgd_ce_l2', lambda m, x, y: attacks.apgd(m, x, y, 0.5, steps=10, norm='l2'), 0.5, 'l2'),
)


class BoundsTest(parameterized.TestCase, tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    keras.utils.set_random_seed(1)
    cls.model = tiny_cnn((12, 12, 1), num_classes=5)
    cls.images = edge_images(24, (12, 12, 1))
    cls.labels = np.random.RandomState(0).randint(0, 5, 24)

  @parameterized.named_parameters(*BATCH_ATTACKS)
  def test_stays_inside_the_threat_model(self, attack, eps, norm):
    adversarial = attack(self.model, self.images, self.labels).numpy()
    linf, l2 = distances(self.images, adversarial)
    distance = linf if norm == 'linf' else l2
    self.assertLessEqual(distance.max(), eps + TOLERANCE)
    self.assertGreater(distance.max(), eps / 2)  # it did move
    self.assertGreaterEqual(adversarial.min(), 0.0)
    self.assertLessEqual(adversarial.max(), 1.0)

  @parameterized.parameters('fgsm', 'pgd5', 'pgd5_l2', 'apgd10_ce', 'apgd10_dlr_l2')
  def test_dataset_attacks_stay_inside(self, name):
    dataset = tf.data.Dataset.from_tensor_slices((self.images, self.labels))
    eps = 0.5 if name.endswith('l2') else 0.1
    result = attacks.attack_dataset(self.model, dataset, name, eps, batch_size=10,
                                    progress=False, keep_adversarial=True)
    linf, l2 = distances(self.images, result.adversarial)
    self.assertLessEqual((l2 if name.endswith('l2') else linf).max(), eps + TOLERANCE)
    self.assertBetween(result.adversarial.min(), 0.0, 1.0)
    self.assertBetween(result.adversarial.max(), 0.0, 1.0)
    self.assertAllEqual(result.labels, self.labels)


  def test_robust_accuracy_keeps_threat_models_apart(self):
    dataset = tf.data.Dataset.from_tensor_slices((self.images, self.labels)).batch(8)
    with self.assertRaisesRegex(ValueError, 'l2_eps'):
      attacks.robust_accuracy(self.model, dataset, ['pgd3_l2'], progress=False)
    l2_only = attacks.robust_accuracy(self.model, dataset, ['pgd3_l2'], l2_eps=0.5,
                                      progress=False)
    self.assertEqual(set(l2_only), {'clean', 'pgd3_l2', 'worst_case_l2'})
    both = attacks.robust_accuracy(self.model, dataset, ['fgsm', 'pgd3_l2'], eps=0.1,
                                   l2_eps=0.5, progress=False)
    self.assertEqual(set(both), {'clean', 'fgsm', 'pgd3_l2', 'worst_case', 'worst_case_l2'})
    self.assertLessEqual(both['worst_case'], min(both['clean'], both['fgsm']))
    self.assertEqual(both['worst_case_l2'], l2_only['worst_case_l2'])


class LinearModelTest(tf.test.TestCase):
  """On a binary linear classifier the worst case is known: the margin
  m = (w_y - w_o).x + b_y - b_o drops by eps * ||w_y - w_o||_1 (L-inf) or
  eps * ||w_y - w_o||_2 (L2), when the optimal perturbation stays inside the box."""

  def setUp(self):
    super().setUp()
    rng = np.random.RandomState(0)
    self.eps = 0.2
    weights = rng.normal(0, 0.5, (16, 2)).astype(np.float32)
    self.model = linear_model(weights, np.zeros(2, np.float32))
    # Inside [eps, 1 - eps], so the box never clips the optimal perturbation.
    self.images = rng.uniform(self.eps, 1 - self.eps, (64, 4, 4, 1)).astype(np.float32)
    self.labels = np.argmax(self.model(self.images), axis=1)  # every clean margin > 0
    self.difference = weights[:, 0] - weights[:, 1]
    self.sign = np.where(self.labels == 0, 1.0, -1.0)  # w_y - w_o = sign * difference

  def analytic(self, dual_norm):
    return margins(self.model, self.images, self.labels) - self.eps * dual_norm

  def assert_reaches(self, adversarial, expected, atol):
    reached = margins(self.model, adversarial, self.labels)
    self.assertAllClose(reached, expected, atol=atol)
    away = np.abs(expected) > 10 * atol  # robust or not, beyond rounding
    self.assertGreater(away.mean(), 0.8)
    self.assertAllEqual(reached[away] > 0, expected[away] > 0)
    return 100 * np.mean(reached > 0)

  def test_pgd_linf_reaches_the_analytic_worst_case(self):
    expected = self.analytic(np.abs(self.difference).sum())
    self.assertBetween(np.mean(expected > 0), 0.2, 0.8)  # a mix of robust and broken
    adversarial = attacks.pgd_linf(self.model, self.images, self.labels, self.eps,
                                   self.eps / 4, 20)
    accuracy = self.assert_reaches(adversarial, expected, atol=1e-5)
    self.assertAlmostEqual(accuracy, 100 * np.mean(expected > 0))
    # The optimum is a corner: -eps * sign(w_y - w_o) in every coordinate.
    optimum = self.images - self.eps * np.sign(
        self.sign[:, None] * self.difference).reshape(-1, 4, 4, 1)
    self.assertAllClose(adversarial, optimum, atol=1e-6)

  def test_fgsm_and_apgd_reach_it_too(self):
    expected = self.analytic(np.abs(self.difference).sum())
    self.assert_reaches(attacks.fgsm(self.model, self.images, self.labels, self.eps),
                        expected, atol=1e-5)
    self.assert_reaches(attacks.apgd(self.model, self.images, self.labels, self.eps,
                                     steps=20), expected, atol=1e-5)

  def test_pgd_l2_reaches_the_analytic_worst_case(self):
    self.eps = 0.3
    self.images = np.clip(self.images, 0.3, 0.7)  # |optimal delta_i| <= eps: no clipping
    self.labels = np.argmax(self.model(self.images), axis=1)
    expected = self.analytic(np.linalg.norm(self.difference))
    adversarial = attacks.pgd_l2(self.model, self.images, self.labels, self.eps,
                                 self.eps / 4, 50)
    self.assert_reaches(adversarial, expected, atol=1e-4)


class DigitsModelTest(tf.test.TestCase):
  """A tiny CNN trained on real digits for three epochs (about 95% clean)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    keras.utils.set_random_seed(0)
    cls.model = tiny_cnn()
    cls.model.compile(keras.optimizers.Adam(3e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cls.model.fit(make_pipeline(load_dataset('digits', 'train'), 32, training=True, seed=0),
                  epochs=3, verbose=0)
    cls.test_split = load_dataset('digits', 'test')
    cls.eps = 0.1

  def run_attack(self, name, **kwargs):
    kwargs = dict(dict(num_examples=120, batch_size=60, progress=False), **kwargs)
    return attacks.attack_dataset(self.model, self.test_split, name, self.eps, **kwargs)

  def test_apgd_is_at_least_as_strong_as_pgd20(self):
    accuracy = attacks.robust_accuracy(
        self.model, self.test_split, ['fgsm', 'pgd20', 'pgd20_dlr', 'apgd_ce', 'apgd_dlr'],
        eps=self.eps, num_examples=120, progress=False, batch_size=60)
    self.assertGreater(accuracy['clean'], 85)
    self.assertLess(accuracy['pgd20'], accuracy['fgsm'])
    self.assertLessEqual(accuracy['apgd_ce'], accuracy['pgd20'])
    # DLR optimizes a different objective; compare APGD with PGD on the same loss.
    self.assertLessEqual(accuracy['apgd_dlr'], accuracy['pgd20_dlr'])
    attacked = [v for k, v in accuracy.items() if k != 'worst_case']
    self.assertLessEqual(accuracy['worst_case'], min(attacked))

  def test_restarts_never_weaken_the_attack(self):
    for name in ('pgd20', 'apgd20_ce'):
      once = self.run_attack(name, restarts=1, seed=3)
      thrice = self.run_attack(name, restarts=3, seed=3)
      # Restart 0 is the single run: every example broken once stays broken.
      self.assertFalse(np.any(thrice.correct & ~once.correct), name)
      self.assertLessEqual(thrice.accuracy, once.accuracy)

  def test_same_seed_same_result(self):
    first = self.run_attack('pgd20', seed=5, keep_adversarial=True)
    second = self.run_attack('pgd20', seed=5, keep_adversarial=True)
    other = self.run_attack('pgd20', seed=6, keep_adversarial=True)
    self.assertAllEqual(first.adversarial, second.adversarial)
    self.assertAllEqual(first.correct, second.correct)
    self.assertNotAllClose(first.adversarial, other.adversarial)

  def test_dataset_and_batch_attacks_agree(self):
    images, labels = next(iter(make_pipeline(self.test_split, 120, training=False)))
    for loss in ('ce', 'dlr'):
      result = self.run_attack(f'apgd20_{loss}', seed=2, keep_adversarial=True, batch_size=40)
      adversarial = attacks.apgd(self.model, images, labels, self.eps, steps=20, loss=loss,
                                 seed=2)
      correct = np.argmax(self.model(adversarial), axis=-1) == labels.numpy()
      self.assertAllEqual(result.correct, correct)
      if loss == 'ce':  # DLR's trajectories fork at float ties (see MAX_TIED_PIXELS)
        self.assertLessEqual(tied_pixel_fraction(result.adversarial, adversarial, atol=1e-6),
                             MAX_TIED_PIXELS)

  def test_distributed_results_equal_one_device(self):
    report = run_on_two_cpus(self.model, DISTRIBUTED_SCRIPT)
    self.assertEqual(report['replicas'], 2)
    for name, (distributed, single, tied, same_correct) in report['attacks'].items():
      self.assertEqual(distributed, single, name)
      self.assertTrue(same_correct, name)
      if not name.endswith('_dlr'):  # DLR's trajectories fork at float ties
        self.assertLessEqual(tied, MAX_TIED_PIXELS, name)
    self.assertLess(report['strategy_run_difference'], 1e-5)


# 49 examples in batches of 16: the padded last batch still gives each replica examples.
DISTRIBUTED_SCRIPT = TWO_CPU_PRELUDE + textwrap.dedent('''
    report = {'replicas': strategy.num_replicas_in_sync, 'attacks': {}}
    for name, eps in [('pgd20', 0.1), ('apgd40_ce', 0.1), ('apgd20_dlr', 0.1), ('pgd10_l2', 1.0)]:
      kwargs = dict(num_examples=49, batch_size=16, restarts=2, seed=1, progress=False,
                    keep_adversarial=True)
      distributed = attacks.attack_dataset(model, test, name, eps, strategy=strategy, **kwargs)
      single = attacks.attack_dataset(model, test, name, eps, **kwargs)
      report['attacks'][name] = [
          distributed.accuracy, single.accuracy,
          float(np.mean(np.abs(distributed.adversarial - single.adversarial) > 1e-5)),
          bool(np.array_equal(distributed.correct, single.correct))]

    # The batch functions also run inside strategy.run, with dataset ids as example ids.
    images = np.stack([image for image, _ in test.dataset.take(16).as_numpy_iterator()])
    labels = np.array([label for _, label in test.dataset.take(16).as_numpy_iterator()])
    batches = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((images, labels, np.arange(16))).batch(16))

    @tf.function
    def attack(batch):
      return strategy.run(lambda x, y, ids: attacks.apgd(model, x, y, 0.1, steps=20,
                                                          example_ids=ids), args=batch)

    replicated = np.concatenate(strategy.experimental_local_results(
        attack(next(iter(batches)))))
    report['strategy_run_difference'] = float(np.abs(
        replicated - attacks.apgd(model, images, labels, 0.1, steps=20).numpy()).max())
    print(json.dumps(report))
''')


class BoundsCheckTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.images = np.full((3, 4, 4, 1), 0.5, np.float32)

  def test_accepts_the_ball_boundary(self):
    attacks.check_adversarial(self.images, self.images + 0.1, 0.1, 'linf')
    delta = np.zeros_like(self.images)
    delta[:, 0, 0, 0] = 0.3
    attacks.check_adversarial(self.images, self.images + delta, 0.3, 'l2')

  def test_rejects_out_of_bounds_examples(self):
    cases = {
        'outside the linf ball': (self.images + 0.1 + 1e-4, 0.1, 'linf'),
        'outside the l2 ball': (self.images + 0.1, 0.3, 'l2'),  # L2 norm 0.4
        'leave the box': (np.where(self.images > 0, 1.01, 0), 1.0, 'linf'),
        'NaN': (np.full_like(self.images, np.nan), 0.1, 'linf'),
        'shape': (self.images[:2], 0.1, 'linf'),
    }
    for expected, (adversarial, eps, norm) in cases.items():
      with self.assertRaisesRegex(attacks.AttackError, expected):
        attacks.check_adversarial(self.images, adversarial, eps, norm)
    with self.assertRaisesRegex(attacks.AttackError, r'\[0, 1\] scale'):
      attacks.check_adversarial(self.images * 255, self.images * 255, 0.1)

  def test_a_broken_projection_fails_loudly(self):
    keras.utils.set_random_seed(0)
    model = tiny_cnn((12, 12, 1), num_classes=3)  # a fresh model: a fresh trace
    labels = np.zeros(3, np.int64)
    images = np.random.RandomState(0).uniform(0.3, 0.7, (3, 12, 12, 1)).astype(np.float32)
    box_only = lambda adversarial, images, eps, norm: tf.clip_by_value(adversarial, 0., 1.)
    with mock.patch.object(ops, 'project', box_only):
      with self.assertRaisesRegex(attacks.AttackError, 'outside the linf ball'):
        attacks.pgd_linf(model, images, labels, 0.05, 0.05, 3)
      with self.assertRaisesRegex(attacks.AttackError, 'outside the linf ball'):
        attacks.robust_accuracy(model, tf.data.Dataset.from_tensor_slices((images, labels)),
                                ['pgd3'], eps=0.05, step_size=0.05, progress=False)

      @tf.function
      def traced(images):  # inside a caller's graph, run-time assertions stand in
        return attacks.pgd_linf(model, images, labels, 0.05, 0.05, 3, seed=1)

      with self.assertRaisesRegex(tf.errors.InvalidArgumentError, 'AttackError'):
        traced(tf.constant(images))


class ModelAndCompilationTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    keras.utils.set_random_seed(0)
    self.images = np.random.RandomState(0).uniform(0, 1, (8, 12, 12, 1)).astype(np.float32)
    self.labels = np.arange(8) % 3

  def test_one_trace_for_any_eps_step_steps_and_seed(self):
    model = tiny_cnn((12, 12, 1), num_classes=3)
    attacks.pgd_linf(model, self.images, self.labels, 0.1, 0.02, 3, seed=0)
    traces = pgd.compiled_pgd.experimental_get_tracing_count()
    attacks.pgd_linf(model, self.images, self.labels, 0.2, 0.05, 7, restarts=2, seed=9)
    attacks.pgd_linf(model, self.images, self.labels, 8 / 255, 2 / 255, 5, seed=3)
    self.assertEqual(pgd.compiled_pgd.experimental_get_tracing_count(), traces)

  def test_keras_models_run_in_inference_mode(self):
    model = tiny_cnn((12, 12, 1), num_classes=3, dropout=0.9)
    through_keras = attacks.pgd_linf(model, self.images, self.labels, 0.1, 0.02, 5)
    through_callable = attacks.pgd_linf(lambda x: model(x, training=False), self.images,
                                        self.labels, 0.1, 0.02, 5)
    self.assertAllEqual(through_keras, through_callable)  # dropout would make them differ

  def test_saved_model_functions_can_be_attacked(self):
    model = tiny_cnn((12, 12, 1), num_classes=3)
    module = tf.Module()
    module.model = model
    module.logits = tf.function(lambda images: {'logits': model(images, training=False)},
                                input_signature=[tf.TensorSpec([None, 12, 12, 1], tf.float32)])
    path = os.path.join(self.get_temp_dir(), 'saved')
    tf.saved_model.save(module, path)
    loaded = tf.saved_model.load(path)
    expected = attacks.apgd(model, self.images, self.labels, 0.1, steps=10, loss='dlr')
    actual = attacks.apgd(loaded.logits, self.images, self.labels, 0.1, steps=10, loss='dlr')
    self.assertAllClose(actual, expected, atol=1e-6)


if __name__ == '__main__':
  tf.test.main()
