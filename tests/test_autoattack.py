"""AutoAttack: schedules and losses (Square's as the authors' standard version), FAB's
projection against a linear program, bounds, analytic optima on a linear model, a dataset
that reshuffles on every pass, strength on a trained digits model, the sanity checks
(masked, probability and random models), gradient-free Square, seeds and distribution."""

import dataclasses
import functools
import json
import subprocess
import sys
import textwrap
from unittest import mock

from absl.testing import parameterized
import keras
import numpy as np
from scipy import optimize
import tensorflow as tf

from igam_tf import attacks
from igam_tf.attacks import square_attack
from igam_tf.data import load_dataset
from igam_tf.data import make_pipeline
from tests.attack_fixtures import MAX_TIED_PIXELS
from tests.attack_fixtures import REPO
from tests.attack_fixtures import TWO_CPU_PRELUDE
from tests.attack_fixtures import distances
from tests.attack_fixtures import edge_images
from tests.attack_fixtures import run_on_two_cpus
from tests.attack_fixtures import tied_pixel_fraction
from tests.attack_fixtures import tiny_cnn

TOLERANCE = 1e-6
# Reduced budgets where a property does not depend on them.
SMALL = attacks.Settings(apgd_steps=20, apgd_t_steps=20, fab_steps=20,
                         square_queries=300)


class ZeroGradientRounding(keras.layers.Layer):
  """Rounds pixels to 8 bits with a zero input gradient: the model computes the same
  thing, but gradient attacks see a flat function (gradient masking)."""

  def call(self, images):
    return images * 0.0 + tf.stop_gradient(tf.round(images * 255.0) / 255.0)


@functools.lru_cache(maxsize=None)
def digits_model():
  """A tiny CNN trained on real digits for three epochs (about 95% clean)."""
  keras.utils.set_random_seed(0)
  model = tiny_cnn()
  model.compile(keras.optimizers.Adam(3e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(make_pipeline(load_dataset('digits', 'train'), 32, training=True, seed=0),
            epochs=3, verbose=0)
  return model


def digits_batch(num):
  images, labels = next(iter(make_pipeline(load_dataset('digits', 'test'), num,
                                           training=False)))
  return images.numpy(), labels.numpy()


def reference_p_selection(it, n_queries, p_init, rescale_schedule):
  """SquareAttack.p_selection of the authors' square.py, transcribed."""
  if rescale_schedule:
    it = int(it / n_queries * 10000)
  for low, high, divisor in ((10, 50, 2), (50, 200, 4), (200, 500, 8), (500, 1000, 16),
                             (1000, 2000, 32), (2000, 4000, 64), (4000, 6000, 128),
                             (6000, 8000, 256)):
    if low < it <= high:
      return p_init / divisor
  return p_init / 512 if it > 8000 else p_init


def masked(model):
  return keras.Sequential([keras.Input(model.input_shape[1:]), ZeroGradientRounding(),
                           model])


def accuracy(model, images, labels):
  return 100.0 * np.mean(np.argmax(attacks.logits_of(model, images), axis=1) == labels)


class ParseTest(parameterized.TestCase):

  @parameterized.parameters(
      ('apgd_t', attacks.AttackSpec('apgd_t', 'apgd_t', 'linf', 'dlr', 100, True)),
      ('apgd50_t', attacks.AttackSpec('apgd50_t', 'apgd_t', 'linf', 'dlr', 50, True)),
      ('fab_t', attacks.AttackSpec('fab_t', 'fab_t', 'linf', 'ce', 100, False)),
      ('fab20_t', attacks.AttackSpec('fab20_t', 'fab_t', 'linf', 'ce', 20, False)),
      ('square', attacks.AttackSpec('square', 'square', 'linf', 'ce', 5000, True)),
      ('square100', attacks.AttackSpec('square100', 'square', 'linf', 'ce', 100, True)),
      ('autoattack', attacks.AttackSpec('autoattack', 'autoattack', steps=100,
                                        random_start=True)),
      ('autoattack_fast', attacks.AttackSpec('autoattack_fast', 'autoattack_fast',
                                             steps=100, random_start=True)),
  )
  def test_parses(self, name, expected):
    self.assertEqual(attacks.parse_attack(name), expected)

  @parameterized.parameters('apgd_t_l2', 'square_l2', 'fab_t5', 'fab_ce', 'autoattack5',
                            'autoattack_standard', 'squares')
  def test_rejects(self, name):
    with self.assertRaisesRegex(ValueError, 'Unknown attack'):
      attacks.parse_attack(name)

  def test_they_run_by_name_with_only_the_package_imported(self):
    # A fresh process that imports igam_tf.attacks and nothing else of the project.
    completed = subprocess.run([sys.executable, '-c', ONLY_THE_PACKAGE_SCRIPT, REPO],
                               capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(completed.returncode, 0, completed.stderr[-3000:])
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    self.assertEqual(result['shape'], [6, 8, 8, 1])
    self.assertLessEqual(result['linf'], 0.1 + TOLERANCE)
    accuracies = result['accuracies']
    self.assertEqual(set(accuracies), {'clean', 'square10', 'autoattack_fast', 'worst_case'})
    self.assertLessEqual(accuracies['worst_case'], accuracies['autoattack_fast'])
    self.assertTrue(all(m == 'igam_tf' or m.startswith('igam_tf.attacks')
                        for m in result['project_modules']), result['project_modules'])


# Square by name on one batch, and Square and an ensemble by name over a dataset, on a
# tiny linear model; prints what they found and the project modules loaded, as JSON.
ONLY_THE_PACKAGE_SCRIPT = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import keras
    import numpy as np
    import tensorflow as tf
    from igam_tf import attacks

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(5)])
    images = np.random.RandomState(0).uniform(0, 1, (6, 8, 8, 1)).astype(np.float32)
    labels = np.argmax(model(images), axis=1)
    found = attacks.run_attack('square10', model, images, labels, eps=0.1)
    accuracies = attacks.robust_accuracy(
        model, tf.data.Dataset.from_tensor_slices((images, labels)),
        ['square10', 'autoattack_fast'], eps=0.1, progress=False, batch_size=4)
    print(json.dumps({'shape': list(found.shape), 'accuracies': accuracies,
                      'linf': float(np.abs(np.asarray(found) - images).max()),
                      'project_modules': sorted(m for m in sys.modules
                                                if m.split('.')[0] == 'igam_tf')}))
''')


class ScheduleAndLossTest(tf.test.TestCase):

  def test_square_schedule_of_10000_queries(self):
    # p_init halves after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000.
    expected = {0: 1, 10: 1, 11: 2, 50: 2, 51: 4, 200: 4, 201: 8, 500: 8, 501: 16,
                1000: 16, 1001: 32, 2000: 32, 2001: 64, 4000: 64, 4001: 128, 6000: 128,
                6001: 256, 8000: 256, 8001: 512, 9999: 512}
    for iteration, divisor in expected.items():
      self.assertAllClose(attacks.square_fraction(iteration, 10000), 0.8 / divisor,
                          msg=str(iteration))

  def test_square_schedule_is_not_rescaled_in_the_standard_version(self):
    # AutoAttack builds its SquareAttack with resc_schedule=False: p_selection(i) reads
    # the iteration as is, so with 5000 queries p stops at p_init / 128 and a square on
    # 32x32 never gets below 3 pixels (the rescaled schedule ends at 1).
    for iteration in (0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001, 2000, 2001, 3000,
                      4000, 4001, 4500, 4999):
      fraction = attacks.square_fraction(iteration, 5000)
      self.assertAllClose(fraction, reference_p_selection(iteration, 5000, 0.8, False),
                          msg=str(iteration))
      self.assertGreaterEqual(int(attacks.square_size(fraction, 32, 32)), 3)
    self.assertAllClose(attacks.square_fraction(4999, 5000), 0.8 / 128)
    self.assertEqual(int(attacks.square_size(0.8 / 128, 32, 32)), 3)  # round(2.53)
    self.assertFalse(attacks.STANDARD.square_rescale)

  def test_square_schedule_is_rescaled_on_request(self):
    # With rescale (resc_schedule=True), at 5000 queries iteration i counts as 2i.
    for iteration, divisor in {5: 1, 6: 2, 25: 2, 26: 4, 100: 4, 101: 8, 4000: 256,
                               4001: 512, 4999: 512}.items():
      fraction = attacks.square_fraction(iteration, 5000, rescale=True)
      self.assertAllClose(fraction, 0.8 / divisor, msg=str(iteration))
      self.assertAllClose(fraction, reference_p_selection(iteration, 5000, 0.8, True))
    self.assertAllClose(attacks.square_fraction(1, 100, p_init=0.5, rescale=True),
                        0.5 / 4)  # 100
    self.assertAllClose(attacks.square_fraction(1, 100, p_init=0.5), 0.5)

  def test_square_uses_the_schedule_it_is_given(self):
    keras.utils.set_random_seed(1)
    model = tiny_cnn((12, 12, 1), num_classes=5)
    images = edge_images(8, (12, 12, 1))
    labels = np.argmax(model(images), axis=1)
    run = functools.partial(attacks.square, model, images, labels, 0.05, queries=20)
    self.assertAllEqual(run(), run(rescale_schedule=False))
    self.assertNotAllClose(run(), run(rescale_schedule=True))

  def test_square_size(self):
    self.assertEqual(int(attacks.square_size(0.8, 28, 28)), 25)  # round(25.04)
    self.assertEqual(int(attacks.square_size(0.8, 32, 32)), 29)  # round(28.62)
    self.assertEqual(int(attacks.square_size(0.8 / 512, 32, 32)), 1)
    self.assertEqual(int(attacks.square_size(1e-6, 28, 28)), 1)  # at least one pixel
    self.assertEqual(int(attacks.square_size(1.0, 4, 6)), 4)  # at most the image

  def test_targets_are_the_other_classes_by_decreasing_logit(self):
    logits = tf.constant([[0.0, 5.0, 3.0, 4.0, 1.0], [9.0, 1.0, 2.0, 0.0, 3.0]])
    labels = tf.constant([1, 2], tf.int64)
    self.assertAllEqual(attacks.target_classes(logits, labels, 9),
                        [[3, 2, 4, 0], [0, 4, 1, 3]])  # K - 1 of 9 for 5 classes
    self.assertAllEqual(attacks.target_classes(logits, labels, 2), [[3, 2], [0, 4]])

  def test_targeted_dlr_and_margin(self):
    logits = tf.constant([[4.0, 3.0, 2.0, 1.0, 0.0], [1.0, 2.0, 6.0, 3.0, 5.0]])
    labels = tf.constant([0, 2], tf.int64)
    targets = tf.constant([3, 4], tf.int64)
    # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    expected = [-(4 - 1) / (4 - (2 + 1) / 2), -(6 - 5) / (6 - (3 + 2) / 2)]
    self.assertAllClose(attacks.targeted_dlr_loss(logits, labels, targets), expected)
    self.assertAllClose(attacks.margin(logits, labels), [1.0, 1.0])
    with self.assertRaisesRegex(ValueError, '4 classes'):
      attacks.targeted_dlr_loss(tf.zeros((1, 3)), labels[:1], targets[:1])

  def test_fab_projection_solves_the_linear_program(self):
    # The smallest L-inf step onto <w, x + d> = b inside [0, 1], where one exists;
    # else the step to the box's corner closest to the hyperplane.
    rng = np.random.RandomState(0)
    num, dims = 40, 12
    points = rng.uniform(0, 1, (num, dims)).astype(np.float32)
    weights = rng.normal(0, 1, (num, dims)).astype(np.float32)
    weights[rng.uniform(size=(num, dims)) < 0.2] = 0
    offsets = (np.sum(weights * points, 1) + rng.normal(0, 4, num)).astype(np.float32)
    steps = attacks.project_linf(points, weights, offsets).numpy()
    reached = np.sum(weights * (points + steps), axis=1)
    self.assertBetween((points + steps).min(), -1e-6, 1.0)
    self.assertBetween((points + steps).max(), 0.0, 1 + 1e-6)
    # Variables (d, r): minimize r subject to -r <= d_i <= r and the hyperplane.
    cost = np.append(np.zeros(dims), 1.0)
    bound_rows = np.concatenate([np.hstack([np.eye(dims), -np.ones((dims, 1))]),
                                 np.hstack([-np.eye(dims), -np.ones((dims, 1))])])
    feasible = 0
    for i in range(num):
      solution = optimize.linprog(
          cost, A_ub=bound_rows, b_ub=np.zeros(2 * dims),
          A_eq=np.append(weights[i], 0.0)[None], b_eq=[offsets[i] - weights[i] @ points[i]],
          bounds=[(-p, 1 - p) for p in points[i]] + [(0, None)])
      if solution.status == 0:
        feasible += 1
        self.assertAllClose(reached[i], offsets[i], atol=1e-4)
        self.assertAllClose(np.abs(steps[i]).max(), solution.fun, atol=1e-5)
      else:  # out of reach: the box's extreme value on the hyperplane's side
        towards = offsets[i] < weights[i] @ points[i]
        extreme = np.sum(np.minimum(weights[i], 0) if towards else np.maximum(weights[i], 0))
        self.assertAllClose(reached[i], extreme, atol=1e-4)
    self.assertBetween(feasible, 15, num - 5)  # both cases are exercised


def _new_small_cnn():
  keras.utils.set_random_seed(1)
  return tiny_cnn((12, 12, 1), num_classes=5)


# name, attack(model, images, labels, eps)
BATCH_ATTACKS = (
    ('apgd_t', lambda m, x, y, e: attacks.apgd_t(m, x, y, e, steps=5, restarts=2)),
    ('fab_t', lambda m, x, y, e: attacks.fab_t(m, x, y, e, steps=5, restarts=2)),
    ('square', lambda m, x, y, e: attacks.square(m, x, y, e, queries=50, restarts=2)),
    ('ensemble', lambda m, x, y, e: attacks.ensemble(m, x, y, e, settings=SMALL)),
)


class BoundsTest(parameterized.TestCase, tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = _new_small_cnn()
    cls.images = edge_images(24, (12, 12, 1))
    cls.labels = np.argmax(cls.model(cls.images), axis=1)  # all correct: all attacked

  @parameterized.named_parameters(*BATCH_ATTACKS)
  def test_stays_inside_the_threat_model(self, attack):
    for eps in (0.02, 0.3):
      adversarial = np.asarray(attack(self.model, self.images, self.labels, eps))
      linf = distances(self.images, adversarial)[0]
      self.assertLessEqual(linf.max(), eps + TOLERANCE)
      self.assertBetween(adversarial.min(), 0.0, 1.0)
      self.assertBetween(adversarial.max(), 0.0, 1.0)
    self.assertLess(accuracy(self.model, adversarial, self.labels), 100)  # it did break

  @parameterized.parameters('apgd5_t', 'fab5_t', 'square50')
  def test_dataset_attacks_stay_inside(self, name):
    dataset = tf.data.Dataset.from_tensor_slices((self.images, self.labels))
    result = attacks.attack_dataset(self.model, dataset, name, 0.1, batch_size=10,
                                    progress=False, keep_adversarial=True)
    linf = distances(self.images, result.adversarial)[0]
    self.assertLessEqual(linf.max(), 0.1 + TOLERANCE)
    self.assertBetween(result.adversarial.min(), 0.0, 1.0)
    self.assertBetween(result.adversarial.max(), 0.0, 1.0)
    # One batch of 24 or batches of 10: the same examples.
    batch = attacks.run_attack(name, self.model, self.images, self.labels, eps=0.1)
    self.assertLessEqual(tied_pixel_fraction(batch, result.adversarial), MAX_TIED_PIXELS)

  def test_robust_accuracy_reports_autoattack_in_the_worst_case(self):
    dataset = tf.data.Dataset.from_tensor_slices((self.images, self.labels)).batch(10)
    with mock.patch.object(attacks.autoattack, 'STANDARD', SMALL):
      accuracy_ = attacks.robust_accuracy(
          self.model, dataset, ['square50', 'autoattack', 'autoattack_fast'], eps=0.05,
          progress=False, batch_size=12)
    self.assertEqual(set(accuracy_), {'clean', 'square50', 'autoattack', 'autoattack_fast',
                                      'worst_case'})
    self.assertLessEqual(accuracy_['worst_case'], accuracy_['autoattack'])
    self.assertLessEqual(accuracy_['autoattack'], accuracy_['autoattack_fast'])

  def test_one_trace_for_any_budget_eps_and_seed(self):
    model = _new_small_cnn()  # a fresh model: a fresh trace
    attacks.square(model, self.images, self.labels, 0.1, queries=5, seed=0)
    traces = square_attack.compiled_square.experimental_get_tracing_count()
    attacks.square(model, self.images, self.labels, 0.2, queries=9, restarts=2, seed=3,
                   p_init=0.5)
    self.assertEqual(square_attack.compiled_square.experimental_get_tracing_count(), traces)

  def test_a_fab_point_beyond_eps_does_not_count(self):
    adversarial = attacks.fab_t(self.model, self.images, self.labels, 1e-4, steps=10)
    self.assertAllEqual(adversarial, self.images)  # nothing within 1e-4: clean returned

  def test_apgd_t_needs_four_classes_and_the_ensemble_skips_it(self):
    keras.utils.set_random_seed(2)
    model = tiny_cnn((12, 12, 1), num_classes=3)
    labels = np.argmax(model(self.images), axis=1)
    with self.assertRaisesRegex(ValueError, '4 classes'):
      attacks.apgd_t(model, self.images, labels, 0.1, steps=2)
    dataset = tf.data.Dataset.from_tensor_slices((self.images, labels))
    result = attacks.run_autoattack(model, dataset, 0.1, settings=SMALL, progress=False,
                                    batch_size=12)
    self.assertEqual(list(result.after), ['clean', 'apgd_ce', 'fab_t', 'square'])
    self.assertTrue(any('APGD-T was skipped' in w for w in result.warnings))


class LinearModelTest(tf.test.TestCase):
  """A 10-class linear model on images inside [eps, 1 - eps]: example i is breakable iff
  min_t (m_t - eps * ||w_y - w_t||_1) < 0, with m_t = z_y - z_t, and its smallest L-inf
  adversarial perturbation is min_t m_t / ||w_y - w_t||_1 (the box never binds)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    rng = np.random.RandomState(0)
    cls.eps = 0.03
    weights = rng.normal(0, 0.5, (16, 10)).astype(np.float32)
    cls.model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(10)])
    cls.model.layers[-1].set_weights([weights, np.zeros(10, np.float32)])
    cls.images = rng.uniform(cls.eps, 1 - cls.eps, (96, 4, 4, 1)).astype(np.float32)
    logits = cls.model(cls.images).numpy().astype(np.float64)
    cls.labels = np.argmax(logits, axis=1)
    rows = np.arange(len(cls.labels))
    gaps = logits[rows, cls.labels][:, None] - logits  # m_t
    dual = np.abs(weights[:, cls.labels].T[:, :, None] - weights[None]).sum(axis=1)
    dual[rows, cls.labels] = 1.0
    ratios = gaps / dual
    ratios[rows, cls.labels] = np.inf
    cls.minimal = ratios.min(axis=1)  # the smallest adversarial L-inf distance
    cls.robust = cls.minimal > cls.eps
    cls.clear = np.abs(cls.minimal - cls.eps) > 0.02 * cls.eps  # away from the boundary

  def test_the_case_is_mixed(self):
    self.assertBetween(self.robust.mean(), 0.2, 0.8)
    self.assertGreater(self.clear.mean(), 0.8)

  def assert_matches_the_optimum(self, adversarial):
    correct = np.argmax(self.model(adversarial), axis=1) == self.labels
    self.assertFalse(np.any(~correct & self.robust))  # no attack beats the optimum
    self.assertAllEqual(correct[self.clear], self.robust[self.clear])

  def test_apgd_t_reaches_the_optimum(self):
    self.assert_matches_the_optimum(
        attacks.apgd_t(self.model, self.images, self.labels, self.eps, steps=50))

  def test_fab_t_finds_the_smallest_perturbation(self):
    adversarial = attacks.fab_t(self.model, self.images, self.labels, self.eps)
    self.assert_matches_the_optimum(adversarial)
    linf = distances(self.images, adversarial)[0]
    broken = linf > 0
    self.assertAllClose(linf[broken], self.minimal[broken], rtol=0.02)

  def test_square_and_the_ensemble_never_beat_the_optimum(self):
    for adversarial in (
        attacks.square(self.model, self.images, self.labels, self.eps, queries=500),
        attacks.ensemble(self.model, self.images, self.labels, self.eps,
                         settings=SMALL)):
      correct = np.argmax(self.model(adversarial), axis=1) == self.labels
      self.assertFalse(np.any(~correct & self.robust))
      self.assertLess(correct.mean(), 1.0)


class ReshuffledDatasetTest(tf.test.TestCase):
  """A dataset that reshuffles on every pass: each attack of the ensemble must still
  attack the examples the clean pass scored. A 10-class linear model decides the answer:
  a third of the examples are misclassified, a third are breakable well within eps, a
  third robust well beyond it (their smallest adversarial perturbation, min_t m_t /
  ||w_y - w_t||_1, is computed exactly)."""

  def test_every_attack_sees_the_examples_of_the_clean_pass(self):
    rng = np.random.RandomState(5)
    eps = 0.03
    weights = rng.normal(0, 0.5, (16, 10)).astype(np.float32)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    model.layers[-1].set_weights([weights, np.zeros(10, np.float32)])
    pool = rng.uniform(eps, 1 - eps, (2000, 4, 4, 1)).astype(np.float32)
    logits = model(pool).numpy().astype(np.float64)
    predicted = np.argmax(logits, axis=1)
    rows = np.arange(len(pool))
    dual = np.abs(weights[:, predicted].T[:, :, None] - weights[None]).sum(axis=1)
    dual[rows, predicted] = 1.0
    minimal = (logits[rows, predicted][:, None] - logits) / dual
    minimal[rows, predicted] = np.inf
    minimal = minimal.min(axis=1)
    robust_pool = np.flatnonzero(minimal > 1.3 * eps)[:12]
    breakable_pool = np.flatnonzero(minimal < 0.7 * eps)[:24]
    chosen = np.concatenate([robust_pool, breakable_pool])
    images = pool[chosen]
    labels = predicted[chosen].copy()
    labels[24:] = (labels[24:] + 1) % 10  # the last 12: misclassified
    expected = np.arange(36) < 12
    self.assertEqual(len(chosen), 36)
    pairwise = np.abs(images[:, None] - images[None]).reshape(36, 36, -1).max(axis=2)
    self.assertGreater(pairwise[~np.eye(36, dtype=bool)].min(), 2 * eps)  # identifiable

    run = functools.partial(attacks.run_autoattack, model, eps=eps, settings=SMALL,
                            batch_size=8, progress=False, keep_adversarial=True, seed=2)
    fixed = run(tf.data.Dataset.from_tensor_slices((images, labels)))
    self.assertAllEqual(fixed.correct, expected)
    reshuffling = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(
        36, seed=0, reshuffle_each_iteration=True)
    orders = [[int(label) for _, label in reshuffling] for _ in range(2)]
    self.assertNotEqual(orders[0], orders[1])  # it does reshuffle
    result = run(reshuffling)
    # Which example the result calls i: the image its adversarial example lies within
    # eps of (the clean image where nothing broke it).
    gaps = np.abs(result.adversarial[:, None] - images[None]).reshape(36, 36, -1).max(axis=2)
    example = np.argmin(gaps, axis=1)
    self.assertLessEqual(gaps[np.arange(36), example].max(), eps + TOLERANCE)
    self.assertCountEqual(example, range(36))  # a permutation
    self.assertNotEqual(list(example), list(range(36)))
    self.assertAllEqual(result.labels, labels[example])
    self.assertAllEqual(result.after['clean'], fixed.after['clean'][example])
    self.assertAllEqual(result.correct, fixed.correct[example])
    self.assertAllEqual(result.correct, expected[example])


class DigitsModelTest(tf.test.TestCase):
  """The tiny CNN trained on digits, attacked at eps 0.1."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = digits_model()
    cls.test_split = load_dataset('digits', 'test')
    cls.eps = 0.1

  def run_attack(self, name, **kwargs):
    kwargs = dict(dict(num_examples=100, batch_size=50, progress=False), **kwargs)
    return attacks.attack_dataset(self.model, self.test_split, name, self.eps, **kwargs)

  def test_apgd_t_is_at_least_as_strong_as_apgd_ce(self):
    clean, apgd_ce, apgd_t = (self.run_attack(name) for name in ('clean', 'apgd_ce',
                                                                 'apgd_t'))
    self.assertGreater(clean.accuracy, 85)
    self.assertLess(apgd_ce.accuracy, clean.accuracy - 30)
    self.assertLessEqual(apgd_t.accuracy, apgd_ce.accuracy)

  def test_the_ensemble_is_at_least_as_strong_as_each_part(self):
    # (It equals attack_dataset's 'autoattack': see the distributed test.)
    result = attacks.run_autoattack(self.model, self.test_split, self.eps,
                                    num_examples=100, batch_size=50, seed=3,
                                    settings=SMALL, progress=False)
    self.assertEqual(list(result.after), ['clean', 'apgd_ce', 'apgd_t', 'fab_t', 'square'])
    self.assertEqual(result.warnings, [])
    parts = {'apgd_ce': 'apgd20_ce', 'apgd_t': 'apgd20_t', 'fab_t': 'fab20_t',
             'square': 'square300'}
    for stage, name in parts.items():
      alone = self.run_attack(name, seed=3)
      self.assertFalse(np.any(result.correct & ~alone.correct), name)
      self.assertLessEqual(result.accuracy, alone.accuracy)
      self.assertLessEqual(result.accuracy, result.accuracies[stage])
    self.assertFalse(np.any(result.correct & ~result.after['clean']))
    self.assertEqual(sorted(set(result.broken_by)), sorted(
        {''} | {name for name in result.after if name in result.broken_by}))
    accuracies = list(result.accuracies.values())
    self.assertEqual(accuracies, sorted(accuracies, reverse=True))  # cumulative
    self.assertEqual(set(result.seconds), set(result.after))

  def test_same_seed_same_result(self):
    images, labels = digits_batch(40)
    for attack in (lambda seed: attacks.square(self.model, images, labels, self.eps,
                                               queries=100, seed=seed),
                   lambda seed: attacks.apgd_t(self.model, images, labels, self.eps,
                                               steps=10, num_targets=2, seed=seed)):
      first, second, other = attack(5), attack(5), attack(6)
      self.assertAllEqual(first, second)
      self.assertNotAllClose(first, other)

  def test_distributed_results_equal_one_device(self):
    report = run_on_two_cpus(self.model, DISTRIBUTED_SCRIPT)
    self.assertEqual(report['replicas'], 2)
    for name, (distributed, single, max_difference, same_correct) in report['attacks'].items():
      self.assertEqual(distributed, single, name)
      self.assertTrue(same_correct, name)
      self.assertLess(max_difference, 1e-5, name)


# 20 examples in batches of 8: the padded last batch still gives each replica examples.
DISTRIBUTED_SCRIPT = TWO_CPU_PRELUDE + textwrap.dedent('''
    small = attacks.Settings(apgd_steps=10, apgd_t_steps=10, fab_steps=10,
                             square_queries=100, num_targets=3)
    attacks.autoattack.STANDARD = small  # the ensembles' defaults, where they are read
    kwargs = dict(num_examples=20, batch_size=8, seed=1, progress=False,
                  keep_adversarial=True)
    report = {'replicas': strategy.num_replicas_in_sync, 'attacks': {}}

    def compare(name, distributed, single):
      report['attacks'][name] = [
          distributed.accuracy, single.accuracy,
          float(np.abs(distributed.adversarial - single.adversarial).max()),
          bool(np.array_equal(distributed.correct, single.correct))]

    # Every attack of the ensemble over the dataset, attack by attack (attack_dataset
    # hands it to run_autoattack); and on one batch, all attacks in one tf.function.
    single = attacks.attack_dataset(model, test, 'autoattack', 0.1, **kwargs)
    compare('autoattack',
            attacks.attack_dataset(model, test, 'autoattack', 0.1, strategy=strategy,
                                   **kwargs), single)
    compare('run_autoattack',
            attacks.run_autoattack(model, test, 0.1, strategy=strategy, settings=small,
                                   **kwargs), single)
    images, labels = next(iter(test.dataset.take(20).batch(20)))
    batch = attacks.run_attack('autoattack', model, images, labels, eps=0.1, seed=1)
    correct = np.argmax(model(batch), axis=1) == labels.numpy()
    report['attacks']['one_batch'] = [
        100.0 * correct.mean(), single.accuracy,
        float(np.abs(np.asarray(batch) - single.adversarial).max()),
        bool(np.array_equal(correct, single.correct))]
    print(json.dumps(report))
''')


class SanityCheckTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = digits_model()
    cls.images, cls.labels = digits_batch(60)
    cls.eps = 0.1

  def test_a_sound_model_raises_no_warning(self):
    self.assertEqual(attacks.check_model(self.model, self.images, self.labels, self.eps),
                     [])

  def test_probability_outputs_are_flagged(self):
    softmax = keras.Sequential([self.model, keras.layers.Softmax()])
    warnings = attacks.check_model(softmax, self.images, self.labels, self.eps)
    self.assertTrue(any('probabilities' in w for w in warnings), warnings)

  def test_a_random_model_is_flagged(self):
    noisy = lambda images: self.model(images, training=False) + tf.random.normal([10])
    warnings = attacks.check_model(noisy, self.images, self.labels, self.eps)
    self.assertTrue(any('random' in w for w in warnings), warnings)

  def test_a_model_without_gradients_is_flagged(self):
    rounding = lambda images: self.model(tf.round(images * 255) / 255, training=False)
    zero, flat = attacks.gradient_flags(rounding, tf.constant(self.images),
                                        tf.constant(self.labels, tf.int64), self.eps)
    self.assertTrue(np.all(zero) and np.all(flat))
    warnings = attacks.check_model(rounding, self.images, self.labels, self.eps)
    self.assertTrue(any('zero' in w for w in warnings), warnings)

  def test_square_breaks_a_masked_model_that_pgd_cannot(self):
    model = masked(self.model)  # a fresh model: a fresh trace, under the patches below
    self.assertEqual(accuracy(model, self.images, self.labels),
                     accuracy(self.model, self.images, self.labels))
    pgd = attacks.pgd_linf(model, self.images, self.labels, self.eps, self.eps / 4, 20)

    def no_gradients(*args, **kwargs):
      raise AssertionError('Square asked for a gradient')

    with mock.patch.object(tf, 'GradientTape', no_gradients), \
         mock.patch.object(tf, 'gradients', no_gradients):
      found = attacks.square(model, self.images, self.labels, self.eps, queries=500)
      square_accuracy = accuracy(model, found, self.labels)
      with self.assertRaises(AssertionError):  # the patch is live
        attacks.pgd_linf(masked(self.model), self.images, self.labels, self.eps, 0.02, 2)
    self.assertGreater(accuracy(model, pgd, self.labels), 80)  # PGD sees no gradient
    self.assertLess(square_accuracy, accuracy(model, pgd, self.labels) - 30)

  def test_a_masked_model_is_flagged_by_the_ensemble(self):
    dataset = tf.data.Dataset.from_tensor_slices((self.images, self.labels))
    result = attacks.run_autoattack(masked(self.model), dataset, self.eps,
                                    settings=dataclasses.replace(SMALL, num_targets=3),
                                    progress=False, batch_size=30)
    self.assertTrue(any('zero cross-entropy' in w for w in result.warnings),
                    result.warnings)
    self.assertTrue(any('Square (gradient-free) broke' in w for w in result.warnings),
                    result.warnings)
    self.assertLess(result.accuracies['square'], result.accuracies['fab_t'] - 30)

  def test_square_warning_threshold(self):
    before = np.ones(1000, bool)
    after = before.copy()
    after[:2] = False  # 0.2%: AutoAttack's threshold, not above it
    self.assertIsNone(attacks.square_warning(before, after))
    after[2] = False
    self.assertIn('3 of 1000', attacks.square_warning(before, after))


if __name__ == '__main__':
  tf.test.main()
