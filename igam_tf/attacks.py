"""White-box attacks and robust accuracy, on the [0, 1] pixel scale.

Attacks work on any Keras classifier (always called with `training=False`) or any
callable `images -> logits` (a SavedModel function returning {'logits': ...} works
too). The batch functions (`fgsm`, `pgd_linf`, `pgd_l2`, `apgd`, `run_attack`) are
`tf.function`s traced once per model, attack kind and input shape: eps, step sizes,
step counts, restarts and seeds are passed as tensors. They also run inside a
caller's `tf.function` or `strategy.run`. `attack_dataset` and `robust_accuracy`
trace each attack once per call and spread batches over a `tf.distribute` strategy.

Randomness is stateless and depends only on (seed, restart, example id), so a result
repeats exactly and does not depend on how examples are batched or split across
replicas. Every adversarial example is checked against the threat model (inside the
eps ball and inside [0, 1], finite) before it is returned or scored: a broken attack
raises `AttackError` instead of reporting a too-good number.

Attack names (`parse_attack`), with the IGAM / Madry settings as defaults:
  clean                    the unperturbed images
  fgsm                     one signed step of size eps, no random start
  pgd<k>[_dlr][_l2]        k steps of PGD from a uniform random start; step eps / 4
                           unless given (2/255 at eps 8/255); cross-entropy unless _dlr;
                           L-inf unless _l2
  apgd[<k>]_{ce,dlr}[_l2]  Auto-PGD (Croce & Hein, 2020), k iterations (default 100)
  apgd[<k>]_t              APGD-T: Auto-PGD on the targeted DLR loss, one run per target
                           class (the top 9 or K - 1), k iterations each (default 100)
  fab[<k>]_t               FAB-T, L-inf, the same targets, k iterations each (default 100)
  square[<q>]              Square Attack, L-inf, q queries (default 5000), no gradients
  autoattack               AutoAttack's standard ensemble: APGD-CE, APGD-T, FAB-T, Square
  autoattack_fast          APGD-CE and APGD-T only: not AutoAttack, and reported as
                           "AutoAttack (fast: APGD-CE, APGD-T)"
The last five live in igam_tf/autoattack.py, which registers them when imported.
"""

import dataclasses
import numbers
import re

from absl import logging
import keras
import numpy as np
import tensorflow as tf

LINF_EPS = 8 / 255  # the paper's CIFAR-10 threat model
NORMS = ('linf', 'l2')
LOSSES = ('ce', 'dlr')
ATTACKS = ('clean', 'fgsm', 'pgd5', 'pgd10', 'pgd20', 'pgd50', 'pgd100', 'pgd20_l2',
           'apgd_ce', 'apgd_dlr', 'apgd_t', 'fab_t', 'square', 'autoattack', 'autoattack_fast')
DEFAULT_ATTACKS = ('clean', 'fgsm', 'pgd20', 'apgd_ce', 'apgd_dlr')
BOUND_TOLERANCE = 1e-6  # float32 rounding of x + delta - x stays far below this
APGD_STEPS = 100
# Attack methods implemented in igam_tf/autoattack.py: {method: default steps or queries}.
AUTOATTACK_METHODS = {'apgd_t': 100, 'fab_t': 100, 'square': 5000, 'autoattack': 100,
                      'autoattack_fast': 100}

# The cores of AUTOATTACK_METHODS, registered by igam_tf/autoattack.py when imported
# (it builds on this module, so this one cannot import it), and the dataset runners of
# the ensembles, which attack a dataset attack by attack as AutoAttack does.
_REGISTERED_CORES = {}
_DATASET_RUNNERS = {}

_LOSS_ALIASES = {'ce': 'ce', 'xent': 'ce', 'dlr': 'dlr'}
_NAME_GRAMMAR = re.compile(
    r'^(?:(?P<clean>clean)|(?P<fgsm>fgsm)'
    r'|pgd(?P<pgd_steps>\d+)(?P<pgd_dlr>_dlr)?(?P<pgd_l2>_l2)?'
    r'|apgd(?P<apgd_steps>\d+)?_(?P<apgd_loss>ce|dlr)(?P<apgd_l2>_l2)?'
    r'|(?P<apgd_t>apgd(?P<apgd_t_steps>\d+)?_t)|(?P<fab_t>fab(?P<fab_t_steps>\d+)?_t)'
    r'|(?P<square>square(?P<square_steps>\d+)?)|(?P<autoattack>autoattack(?:_fast)?))$')


class AttackError(RuntimeError):
  """An attack produced examples outside its threat model (a bug, never a result)."""


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """An attack's settings, as parsed from its name.

  Attributes:
    name: the name it was parsed from, e.g. 'pgd20'.
    method: 'clean', 'fgsm', 'pgd', 'apgd' or one of AUTOATTACK_METHODS.
    norm: 'linf' or 'l2'.
    loss: 'ce' or 'dlr'.
    steps: gradient steps (0 for clean, 1 for fgsm); queries for square.
    random_start: whether it starts from a random point in the eps ball.
  """
  name: str
  method: str
  norm: str = 'linf'
  loss: str = 'ce'
  steps: int = 0
  random_start: bool = False

  def default_step_size(self, eps):
    """The step size used unless one is given: eps / 4 (2/255 at 8/255) for PGD."""
    return eps if self.method == 'fgsm' else eps / 4


@dataclasses.dataclass(frozen=True)
class AttackResult:
  """One attack over a dataset, in example order.

  Attributes:
    name: the attack's name.
    correct: bool [N], whether the model still classifies each example correctly.
    labels: int64 [N].
    adversarial: float32 [N, H, W, C], or None unless asked for.
    zero_gradient: bool [N], examples whose cross-entropy input gradient is exactly zero
      at the clean input (only for 'clean', else None).
    report: the ensembles' own report (an `autoattack.AutoAttackResult`: accuracy after
      each attack, their times, the sanity checks), else None.
  """
  name: str
  correct: np.ndarray
  labels: np.ndarray
  adversarial: np.ndarray | None = None
  zero_gradient: np.ndarray | None = None
  report: object = None

  @property
  def accuracy(self):
    """Accuracy in percent."""
    return 100.0 * float(np.mean(self.correct)) if self.correct.size else float('nan')


def parse_attack(name):
  """Returns the `AttackSpec` for an attack name (grammar in the module docstring)."""
  name = name.strip().lower()
  match = _NAME_GRAMMAR.match(name)
  if not match:
    raise ValueError(f'Unknown attack {name!r}; expected clean, fgsm, pgd<k>[_dlr][_l2], '
                     f'apgd[<k>]_(ce|dlr)[_l2], apgd[<k>]_t, fab[<k>]_t, square[<q>], '
                     f'autoattack or autoattack_fast, e.g. {", ".join(ATTACKS)}')
  if match['clean']:
    return AttackSpec(name, 'clean')
  if match['fgsm']:
    return AttackSpec(name, 'fgsm', steps=1)
  if match['pgd_steps'] is not None:
    return AttackSpec(name, 'pgd', 'l2' if match['pgd_l2'] else 'linf',
                      'dlr' if match['pgd_dlr'] else 'ce', steps=int(match['pgd_steps']),
                      random_start=True)
  if match['autoattack']:
    return AttackSpec(name, name, steps=AUTOATTACK_METHODS[name], random_start=True)
  for method in ('apgd_t', 'fab_t', 'square'):
    if match[method]:
      steps = match[f'{method}_steps']
      return AttackSpec(name, method, loss='dlr' if method == 'apgd_t' else 'ce',
                        steps=int(steps) if steps else AUTOATTACK_METHODS[method],
                        random_start=method != 'fab_t')
  steps = int(match['apgd_steps']) if match['apgd_steps'] else APGD_STEPS
  return AttackSpec(name, 'apgd', 'l2' if match['apgd_l2'] else 'linf', match['apgd_loss'],
                    steps=steps, random_start=True)


def register_core(method, core, dataset_runner=None):
  """Registers the attack of an `AttackSpec.method` defined in another module:
  core(spec, model, images, labels, eps, restarts, seed, example_ids, compiled) returns
  unchecked adversarial examples, like the cores below. `attack_dataset` hands the whole
  dataset to dataset_runner(spec, model, dataset, eps, restarts, num_examples, seed,
  strategy, progress, batch_size, keep_adversarial) -> `AttackResult` if one is given."""
  _REGISTERED_CORES[method] = core
  if dataset_runner:
    _DATASET_RUNNERS[method] = dataset_runner


def _registered_core(spec):
  """The registered core of a spec whose method is in AUTOATTACK_METHODS, else None."""
  if spec.method not in AUTOATTACK_METHODS:
    return None
  if spec.method not in _REGISTERED_CORES:
    raise ValueError(f'Attack {spec.name!r} is defined in igam_tf/autoattack.py: import '
                     f'igam_tf.autoattack before running it.')
  return _REGISTERED_CORES[spec.method]


# Model, losses and the threat model's geometry.


def logits_of(model, images):
  """float32 logits of `model` in inference mode."""
  if isinstance(model, keras.layers.Layer):
    logits = model(images, training=False)
  else:
    logits = model(images)
  if isinstance(logits, dict):  # e.g. this project's serving_default signature
    logits = logits['logits']
  return tf.cast(logits, tf.float32)


def per_example_loss(logits, labels, loss='ce'):
  """Cross-entropy, or the DLR loss -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3 + 1e-12), or
  a callable (logits, labels) -> [B] losses (e.g. autoattack's targeted DLR)."""
  if callable(loss):
    return loss(logits, labels)
  loss = _canonical_loss(loss)
  if loss == 'ce':
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
  if logits.shape[-1] is not None and logits.shape[-1] < 3:
    raise ValueError(f'The DLR loss needs at least 3 classes, got {logits.shape[-1]}')
  is_label = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
  true_logit = tf.reduce_max(tf.where(is_label, logits, -np.inf), axis=-1)
  best_other = tf.reduce_max(tf.where(is_label, -np.inf, logits), axis=-1)
  ranked = tf.sort(logits, axis=-1, direction='DESCENDING')
  return -(true_logit - best_other) / (ranked[:, 0] - ranked[:, 2] + 1e-12)


def _canonical_loss(loss):
  if loss not in _LOSS_ALIASES:
    raise ValueError(f'loss must be one of {LOSSES} (or xent for ce), got {loss!r}')
  return _LOSS_ALIASES[loss]


def _loss_gradient(model, images, labels, loss):
  """Per-example losses, their input gradients and the logits at `images`."""
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(images)
    logits = logits_of(model, images)
    losses = per_example_loss(logits, labels, loss)
    total = tf.reduce_sum(losses)  # a sum keeps each example's gradient its own
  gradient = tape.gradient(total, images)
  if gradient is None:
    raise AttackError('The model gives no gradient with respect to its input images.')
  return losses, gradient, logits


def _misclassified(logits, labels):
  return tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int64), labels)


def _per_example(values, like):
  """Reshapes [B] values to broadcast against `like` [B, ...]."""
  return tf.reshape(values, [-1] + [1] * (like.shape.rank - 1))


def _where(condition, x, y):
  return tf.where(_per_example(condition, x), x, y)


def _l2_norm(values):
  axes = list(range(1, values.shape.rank))
  return tf.sqrt(tf.reduce_sum(tf.square(values), axis=axes, keepdims=True))


def _ascent_direction(gradient, norm):
  if norm == 'linf':
    return tf.sign(gradient)
  return gradient / (_l2_norm(gradient) + 1e-12)


def _project(adversarial, images, eps, norm):
  """Projects onto the eps ball around `images`, then onto the box [0, 1]."""
  if norm == 'linf':
    adversarial = tf.clip_by_value(adversarial, images - eps, images + eps)
  else:
    delta = adversarial - images
    delta *= tf.math.divide_no_nan(eps, tf.maximum(_l2_norm(delta), eps))  # 0 at eps 0
    adversarial = images + delta
  # Clipping to the box only shrinks each coordinate of delta, so it stays in the ball.
  return tf.clip_by_value(adversarial, 0.0, 1.0)


def _example_seeds(seed, restart, example_ids):
  """[B, 2] stateless seeds, one per (seed, restart, example id)."""
  example_ids = tf.cast(example_ids, tf.int64)
  restart = tf.cast(restart, tf.int64)
  return tf.stack([tf.fill(tf.shape(example_ids), tf.cast(seed, tf.int64)),
                   restart * 2**32 + example_ids], axis=1)


def _per_example_noise(images, seeds, distribution):
  """Noise shaped like `images`, each example's drawn from its own seed."""
  shape = tf.shape(images)[1:]

  def draw(seed):
    if distribution == 'uniform':
      return tf.random.stateless_uniform(shape, seed, -1.0, 1.0)
    return tf.random.stateless_normal(shape, seed)

  # One draw per example, not one for the batch: the noise must not depend on the
  # batch an example lands in (vectorized_map would loop over stateless ops anyway).
  return tf.map_fn(draw, seeds, fn_output_signature=tf.TensorSpec(images.shape[1:],
                                                                   tf.float32))


def _uniform_in_ball(images, eps, norm, seeds):
  if norm == 'linf':
    return eps * _per_example_noise(images, seeds, 'uniform')
  # A uniform direction, and a radius distributed as eps * U^(1/d).
  direction = _per_example_noise(images, seeds, 'normal')
  direction /= _l2_norm(direction) + 1e-12
  dims = tf.cast(tf.reduce_prod(tf.shape(images)[1:]), tf.float32)
  radii = tf.map_fn(
      lambda seed: tf.random.stateless_uniform(
          [], tf.random.experimental.stateless_fold_in(seed, 1)),
      seeds, fn_output_signature=tf.float32)
  return direction * _per_example(eps * radii**(1.0 / dims), images)


# The attacks' cores: unchecked, tensors in, tensors out. Compiled below for the batch
# functions; attack_dataset traces them straight into its own per-replica function.


def _fgsm_core(model, images, labels, eps):
  _, gradient, _ = _loss_gradient(model, images, labels, 'ce')
  return _project(images + eps * tf.sign(gradient), images, eps, 'linf')


def _pgd_core(model, images, labels, eps, step_size, steps, restarts, seed, example_ids, *,
              norm, loss, random_start):
  """PGD with restarts; keeps, per example, the first restart that fools the model, else
  the final iterate with the highest loss."""
  best = images
  best_fooled = tf.zeros_like(labels, tf.bool)
  best_loss = tf.fill(tf.shape(labels), -np.inf)
  for restart in tf.range(restarts):
    adversarial = images
    if random_start:
      start = _uniform_in_ball(images, eps, norm, _example_seeds(seed, restart, example_ids))
      adversarial = _project(images + start, images, eps, norm)
    for _ in tf.range(steps):
      _, gradient, _ = _loss_gradient(model, adversarial, labels, loss)
      adversarial = _project(adversarial + step_size * _ascent_direction(gradient, norm),
                             images, eps, norm)
    logits = logits_of(model, adversarial)
    losses = per_example_loss(logits, labels, loss)
    fooled = _misclassified(logits, labels)
    take = ~best_fooled & (fooled | (losses > best_loss))
    best = _where(take, adversarial, best)
    best_loss = tf.where(take, losses, best_loss)
    best_fooled |= fooled
  return best


def _checkpoint_schedule(steps):
  """AutoPGD's first checkpoint interval, its decrement and its minimum, in iterations:
  p_1 = 0.22, p_{j+1} - p_j = max(p_j - p_{j-1} - 0.03, 0.06) of the budget (exact in ints)."""
  steps = tf.cast(steps, tf.int32)
  return (tf.maximum(22 * steps // 100, 1), tf.maximum(3 * steps // 100, 1),
          tf.maximum(6 * steps // 100, 1))


def _apgd_core(model, images, labels, eps, steps, restarts, seed, example_ids, rho, *,
               norm, loss):
  """Auto-PGD with restarts; keeps, per example, the first restart that fools the model,
  else the point of highest loss."""
  best = images
  best_fooled = tf.zeros_like(labels, tf.bool)
  best_loss = tf.fill(tf.shape(labels), -np.inf)
  for restart in tf.range(restarts):
    adversarial, fooled, losses = _apgd_run(
        model, images, labels, eps, steps, _example_seeds(seed, restart, example_ids), rho,
        norm, loss)
    take = ~best_fooled & (fooled | (losses > best_loss))
    best = _where(take, adversarial, best)
    best_loss = tf.where(take, losses, best_loss)
    best_fooled |= fooled
  return best


def _step_size_state(best_loss, steps):
  """AutoPGD's step-size bookkeeping before its first iteration, as the authors' code
  (autopgd_base.py) starts it: (the previous iterate's loss, increases counted since the
  last checkpoint, iterations since it, the current interval, the best loss at the last
  checkpoint, whether the step was halved there).

  The previous loss starts at 0, not at the start point's loss: the authors' first
  oscillation count reads row -1 of `loss_steps`, still zero then, so the first iterate
  counts as an increase exactly when its loss is positive. And no condition 2 at the
  first checkpoint (`reduced_last_check` starts at ones).
  """
  interval, _, _ = _checkpoint_schedule(steps)
  return (tf.zeros_like(best_loss), tf.zeros_like(best_loss), tf.constant(0, tf.int32),
          interval, best_loss, tf.ones_like(best_loss, tf.bool))


def _step_size_update(state, loss, best_loss, steps, rho):
  """One iteration of AutoPGD's step-size bookkeeping, as in the authors' code.

  Args:
    state: from `_step_size_state` or the previous call.
    loss: float [B], the loss of the iterate just taken (their `loss_steps[i]`).
    best_loss: float [B], the best loss so far, that iterate included (`loss_best`).
    steps: the run's iterations (sets the checkpoints).
    rho: condition 1's threshold.

  Returns:
    (halve: bool [B], the new state). At a checkpoint (`counter3 == k`), halve where
    condition 1 holds: at most rho * interval of the interval's iterates raised the loss
    over the iterate before them (`check_oscillation` over `loss_steps`; the paper writes
    <, the code <=), or condition 2: the step was not halved at the last checkpoint and
    the best loss has not risen since (`fl_reduce_no_impr`). The previous loss is always
    the iterate's own: a halving that moves the next step's start back to the best point
    does not change what the next iterate is compared with.
  """
  previous, increases, since_check, interval, best_at_check, halved_at_check = state
  _, decrement, min_interval = _checkpoint_schedule(steps)
  increases += tf.cast(loss > previous, increases.dtype)
  since_check += 1
  at_check = tf.equal(since_check, interval)
  oscillating = increases <= rho * tf.cast(interval, increases.dtype)  # condition 1
  stalled = ~halved_at_check & (best_at_check >= best_loss)  # condition 2
  halve = at_check & (oscillating | stalled)
  return halve, (
      loss,
      tf.where(at_check, tf.zeros_like(increases), increases),
      tf.where(at_check, 0, since_check),
      tf.where(at_check, tf.maximum(interval - decrement, min_interval), interval),
      tf.where(at_check, best_loss, best_at_check),
      tf.where(at_check, halve, halved_at_check))


def _apgd_run(model, images, labels, eps, steps, seeds, rho, norm, loss):
  """One AutoPGD run (Croce & Hein 2020, Algorithm 1; details as in their code,
  autopgd_base.py's attack_single_run).

  Returns (adversarial, fooled, best loss): the last misclassified iterate where one was
  found, else the iterate of highest loss.
  """
  noise = _per_example_noise(images, seeds, 'uniform' if norm == 'linf' else 'normal')
  if norm == 'linf':  # as the authors' code: scaled so the largest coordinate is eps
    scale = tf.reduce_max(tf.abs(noise), axis=list(range(1, noise.shape.rank)), keepdims=True)
  else:
    scale = _l2_norm(noise)
  current = tf.clip_by_value(images + eps * noise / (scale + 1e-12), 0.0, 1.0)
  current_loss, gradient, logits = _loss_gradient(model, current, labels, loss)
  previous = current
  fooled = _misclassified(logits, labels)
  fooled_point = current
  best, best_loss, best_gradient = current, current_loss, gradient
  step = tf.fill(tf.shape(labels), 2.0 * eps)
  state = _step_size_state(best_loss, steps)

  for i in tf.range(steps):
    momentum = tf.where(tf.equal(i, 0), 1.0, 0.75)  # no momentum on the first step
    velocity = current - previous
    previous = current
    direction = _ascent_direction(gradient, norm)
    z = _project(current + _per_example(step, current) * direction, images, eps, norm)
    current = _project(current + momentum * (z - current) + (1 - momentum) * velocity,
                       images, eps, norm)
    current_loss, gradient, logits = _loss_gradient(model, current, labels, loss)

    fooled_now = _misclassified(logits, labels)
    fooled_point = _where(fooled_now, current, fooled_point)
    fooled |= fooled_now
    improved = current_loss > best_loss
    best = _where(improved, current, best)
    best_gradient = _where(improved, gradient, best_gradient)
    best_loss = tf.where(improved, current_loss, best_loss)

    halve, state = _step_size_update(state, current_loss, best_loss, steps, rho)
    step = tf.where(halve, step / 2, step)
    # Halving restarts from the best point so far (the next step's momentum included).
    current = _where(halve, best, current)
    gradient = _where(halve, best_gradient, gradient)

  return _where(fooled, fooled_point, best), fooled, best_loss


_compiled_fgsm = tf.function(_fgsm_core)
_compiled_pgd = tf.function(_pgd_core)
_compiled_apgd = tf.function(_apgd_core)


# Bounds checks.


def check_adversarial(images, adversarial, eps, norm='linf', tolerance=BOUND_TOLERANCE):
  """Raises AttackError unless every adversarial example is finite, inside [0, 1] and
  within eps (+ tolerance) of its image in the given norm."""
  if norm not in NORMS:
    raise ValueError(f'norm must be one of {NORMS}, got {norm!r}')
  images = np.asarray(images, np.float64)
  adversarial = np.asarray(adversarial, np.float64)
  if adversarial.shape != images.shape:
    raise AttackError(f'Adversarial examples have shape {adversarial.shape}, the images '
                      f'{images.shape}.')
  if not np.all(np.isfinite(adversarial)):
    raise AttackError('Adversarial examples contain NaN or infinite values.')
  if images.size and (images.min() < 0 or images.max() > 1):
    raise AttackError(f'Images must be on the [0, 1] scale, got values in '
                      f'[{images.min()}, {images.max()}].')
  if adversarial.size and (adversarial.min() < 0 or adversarial.max() > 1):
    raise AttackError(f'Adversarial examples leave the box [0, 1]: values in '
                      f'[{adversarial.min()}, {adversarial.max()}].')
  delta = (adversarial - images).reshape(len(images), -1)
  distances = (np.abs(delta).max(axis=1, initial=0.0) if norm == 'linf'
               else np.sqrt(np.square(delta).sum(axis=1)))
  outside = distances > eps + tolerance
  if np.any(outside):
    worst = int(np.argmax(distances))
    raise AttackError(f'{int(outside.sum())} of {len(images)} adversarial examples lie '
                      f'outside the {norm} ball of radius {eps}: example {worst} is at '
                      f'distance {distances[worst]:.8g}.')


def _checked(images, adversarial, eps, norm):
  """Checks and returns `adversarial`: AttackError when eager; when traced (inside a
  caller's tf.function or strategy.run) run-time assertions stand in for it."""
  if tf.executing_eagerly():
    check_adversarial(images, adversarial, float(eps), norm)
    return adversarial
  delta = adversarial - images
  axes = list(range(1, delta.shape.rank))
  distance = (tf.reduce_max(tf.abs(delta), axis=axes) if norm == 'linf'
              else tf.sqrt(tf.reduce_sum(tf.square(delta), axis=axes)))
  checks = [
      tf.debugging.assert_all_finite(adversarial, 'AttackError: non-finite adversarial'),
      tf.debugging.assert_greater_equal(adversarial, 0.0, 'AttackError: below 0'),
      tf.debugging.assert_less_equal(adversarial, 1.0, 'AttackError: above 1'),
      tf.debugging.assert_less_equal(distance, tf.cast(eps, tf.float32) + BOUND_TOLERANCE,
                                     f'AttackError: outside the {norm} eps ball'),
  ]
  with tf.control_dependencies(checks):
    return tf.identity(adversarial)


# Public attacks on one batch.


def _batch_inputs(images, labels, example_ids):
  images = tf.cast(images, tf.float32)
  labels = tf.cast(labels, tf.int64)
  if labels.shape.rank != 1:
    raise ValueError(f'labels must be class indices of shape [batch], got {labels.shape}')
  if example_ids is None:
    example_ids = tf.range(tf.shape(labels, out_type=tf.int64)[0])
  return images, labels, tf.cast(example_ids, tf.int64)


def _check_settings(eps, step_size=None, steps=None, restarts=1):
  """Checks the settings given as numbers (tensors pass: they may be symbolic)."""
  for name, value, low in (('eps', eps, 0), ('step_size', step_size, 0), ('steps', steps, 0),
                           ('restarts', restarts, 1)):
    if isinstance(value, numbers.Real) and value < low:
      raise ValueError(f'{name} must be >= {low}, got {value}')


def fgsm(model, images, labels, eps):
  """FGSM as Madry et al. and IGAM define it: one signed step of size eps, no random start."""
  _check_settings(eps)
  images, labels, _ = _batch_inputs(images, labels, None)
  adversarial = _compiled_fgsm(model, images, labels, tf.cast(eps, tf.float32))
  return _checked(images, adversarial, eps, 'linf')


def _pgd(norm, model, images, labels, eps, step_size, steps, restarts, random_start, loss,
         seed, example_ids):
  _check_settings(eps, step_size, steps, restarts)
  images, labels, example_ids = _batch_inputs(images, labels, example_ids)
  adversarial = _compiled_pgd(
      model, images, labels, tf.cast(eps, tf.float32), tf.cast(step_size, tf.float32),
      tf.cast(steps, tf.int32), tf.cast(restarts, tf.int32), tf.cast(seed, tf.int64),
      example_ids, norm=norm, loss=_canonical_loss(loss),
      random_start=bool(random_start))
  return _checked(images, adversarial, eps, norm)


def pgd_linf(model, images, labels, eps, step_size, steps, restarts=1, random_start=True,
             loss='xent', seed=0, example_ids=None):
  """L-inf PGD (Madry et al.): a start drawn from U(-eps, eps), signed gradient steps,
  projection onto the eps ball and [0, 1]; returns the final iterate.

  With restarts, an example counts as broken if any restart breaks it: returns the first
  restart's point that fools the model, else the final iterate of highest loss. Restart 0
  is the single run with the same seed, so restarts never weaken the attack.

  Args:
    model: a Keras classifier or a callable images -> logits.
    images: float [B, H, W, C] in [0, 1].
    labels: int [B].
    eps: L-inf radius on the [0, 1] scale, e.g. 8 / 255.
    step_size: e.g. eps / 4.
    steps: gradient steps per restart.
    restarts: independent random starts.
    random_start: start from a uniform random point in the ball (else from the images).
    loss: 'xent' (or 'ce') or 'dlr'.
    seed: with `example_ids`, fixes every random start.
    example_ids: int [B], each example's id for its random start (default 0..B-1); give
      dataset indices so results do not depend on the batching.

  Returns:
    float32 adversarial images [B, H, W, C], checked against the threat model.

  Raises:
    AttackError: an adversarial example outside the threat model.
  """
  return _pgd('linf', model, images, labels, eps, step_size, steps, restarts, random_start,
              loss, seed, example_ids)


def pgd_l2(model, images, labels, eps, step_size, steps, restarts=1, random_start=True,
           loss='xent', seed=0, example_ids=None):
  """L2 PGD: a start uniform in the eps ball, steps along the L2-normalized gradient,
  projection onto the ball and [0, 1]. Arguments and restarts as `pgd_linf`."""
  return _pgd('l2', model, images, labels, eps, step_size, steps, restarts, random_start,
              loss, seed, example_ids)


def apgd(model, images, labels, eps, steps=APGD_STEPS, loss='ce', restarts=1, seed=0,
         rho=0.75, norm='linf', example_ids=None):
  """Auto-PGD (Croce & Hein, ICML 2020), the first attack of AutoAttack.

  Initial step 2 * eps, momentum 0.75, per-example step halving at
  the checkpoints p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
  when at most a fraction `rho` of the iterates since the last checkpoint had a higher
  loss than the iterate before them, or when the step was not halved at the last
  checkpoint and the best loss has not improved since; halving restarts from the best
  point. This bookkeeping is the authors' code's (see `_step_size_update`): each iterate
  is compared with the previous iterate, even where a halving moved the next step's
  start to the best point, and the first iterate with 0. The start is random (as the
  authors' code). Returns a misclassified iterate where one was found, else the point of
  highest loss; over restarts, the worst case per example (as `pgd_linf`).

  Args:
    model, images, labels, seed, example_ids: as `pgd_linf`.
    eps: the radius on the [0, 1] scale.
    steps: iterations per restart.
    loss: 'ce' (or 'xent') or 'dlr' (needs 3 or more classes).
    restarts: independent random starts.
    rho: condition 1's threshold.
    norm: 'linf' or 'l2'.

  Returns:
    float32 adversarial images, checked against the threat model.
  """
  _check_settings(eps, None, steps, restarts)
  if norm not in NORMS:
    raise ValueError(f'norm must be one of {NORMS}, got {norm!r}')
  images, labels, example_ids = _batch_inputs(images, labels, example_ids)
  adversarial = _compiled_apgd(
      model, images, labels, tf.cast(eps, tf.float32), tf.cast(steps, tf.int32),
      tf.cast(restarts, tf.int32), tf.cast(seed, tf.int64), example_ids,
      tf.cast(rho, tf.float32), norm=norm, loss=_canonical_loss(loss))
  return _checked(images, adversarial, eps, norm)


def _adversarial_core(spec, model, images, labels, eps, step_size, restarts, seed,
                      example_ids, compiled=True):
  """The unchecked adversarial examples of `spec`; `compiled=False` traces the attack
  into the calling function."""
  fgsm_core, pgd_core, apgd_core = ((_compiled_fgsm, _compiled_pgd, _compiled_apgd)
                                    if compiled else (_fgsm_core, _pgd_core, _apgd_core))
  if spec.method == 'clean':
    return images
  if spec.method == 'fgsm':
    return fgsm_core(model, images, labels, eps)
  if spec.method == 'pgd':
    return pgd_core(model, images, labels, eps, step_size, tf.constant(spec.steps),
                    restarts, seed, example_ids, norm=spec.norm, loss=spec.loss,
                    random_start=spec.random_start)
  if spec.method in AUTOATTACK_METHODS:
    return _registered_core(spec)(spec, model, images, labels, eps, restarts, seed,
                                  example_ids, compiled=compiled)
  return apgd_core(model, images, labels, eps, tf.constant(spec.steps), restarts, seed,
                   example_ids, tf.constant(0.75), norm=spec.norm, loss=spec.loss)


def run_attack(attack, model, images, labels, eps=LINF_EPS, step_size=None, restarts=1,
               seed=0, example_ids=None):
  """Runs an attack given by name or `AttackSpec` on one batch; returns checked examples."""
  spec = parse_attack(attack) if isinstance(attack, str) else attack
  step_size = spec.default_step_size(eps) if step_size is None else step_size
  _check_settings(eps, step_size, spec.steps, restarts)
  _registered_core(spec)  # fails before any work if not registered
  images, labels, example_ids = _batch_inputs(images, labels, example_ids)
  adversarial = _adversarial_core(
      spec, model, images, labels, tf.cast(eps, tf.float32), tf.cast(step_size, tf.float32),
      tf.cast(restarts, tf.int32), tf.cast(seed, tf.int64), example_ids)
  return _checked(images, adversarial, eps, spec.norm)


# Datasets.


def _numbered_batches(dataset, num_examples, batch_size):
  """Full batches of (images, labels, example ids) from (image, label) pairs, batched or
  not; the last batch is padded with copies of the first example, with id -1.

  Equal batches trace once, and no replica is ever handed an empty batch (oneDNN's
  Conv2D returns an empty input unchanged, which breaks the next layer).
  """
  dataset = getattr(dataset, 'dataset', dataset)  # a data.DatasetSplit
  if dataset.element_spec[0].shape.rank == 4:
    dataset = dataset.unbatch()
  if num_examples is not None:
    dataset = dataset.take(num_examples)
  numbered = dataset.enumerate().map(lambda index, example: (example[0], example[1], index))
  padding = numbered.take(1).map(
      lambda image, label, index: (image, label, tf.constant(-1, tf.int64)))
  return numbered.concatenate(padding.repeat(batch_size - 1)).batch(
      batch_size, drop_remainder=True)


def _clean_zero_gradients(model, images, labels):
  """Examples whose cross-entropy input gradient is exactly zero: gradient attacks cannot
  move them (AutoAttack's check for gradient masking)."""
  _, gradient, _ = _loss_gradient(model, images, labels, 'ce')
  return tf.reduce_max(tf.abs(gradient), axis=list(range(1, gradient.shape.rank))) == 0


def attack_dataset(model, dataset, attack, eps=LINF_EPS, step_size=None, restarts=1,
                   num_examples=None, seed=0, strategy=None, progress=True, batch_size=100,
                   keep_adversarial=False):
  """Attacks every example of a dataset and scores the checked adversarial examples.

  Args:
    model: a Keras classifier or a callable images -> logits; under `strategy`, built in
      its scope.
    dataset: (image, label) pairs, batched or not, or a `data.DatasetSplit`; images float
      in [0, 1]. It is rebatched to `batch_size`, and examples are numbered in order for
      their random starts.
    attack: an attack name or `AttackSpec`.
    eps, step_size, restarts, seed: the attack's settings (step_size None: the default).
    num_examples: attack the first this many (None: all).
    strategy: a `tf.distribute.Strategy` that splits each batch across its replicas; the
      results are the same as on one device.
    progress: show a progress bar.
    batch_size: global batch size.
    keep_adversarial: also return the adversarial examples.

  Returns:
    An `AttackResult`.

  Raises:
    AttackError: an adversarial example outside the threat model.
  """
  spec = parse_attack(attack) if isinstance(attack, str) else attack
  step_size = spec.default_step_size(eps) if step_size is None else step_size
  _check_settings(eps, step_size, spec.steps, restarts)
  _registered_core(spec)  # fails before any work if not registered
  if spec.method in _DATASET_RUNNERS:
    return _DATASET_RUNNERS[spec.method](spec, model, dataset, eps, restarts, num_examples,
                                         seed, strategy, progress, batch_size,
                                         keep_adversarial)
  strategy = strategy or tf.distribute.get_strategy()
  if batch_size < strategy.num_replicas_in_sync:
    raise ValueError(f'batch_size {batch_size} is smaller than the number of replicas '
                     f'({strategy.num_replicas_in_sync}).')
  settings = (tf.cast(eps, tf.float32), tf.cast(step_size, tf.float32),
              tf.cast(restarts, tf.int32), tf.cast(seed, tf.int64))

  def attack_replica_batch(images, labels, example_ids):
    images, labels = tf.cast(images, tf.float32), tf.cast(labels, tf.int64)
    adversarial = _adversarial_core(spec, model, images, labels, *settings, example_ids,
                                    compiled=False)
    outputs = dict(images=images, adversarial=adversarial, labels=labels,
                   example_ids=example_ids,
                   correct=~_misclassified(logits_of(model, adversarial), labels))
    if spec.method == 'clean':
      outputs['zero_gradient'] = _clean_zero_gradients(model, images, labels)
    return outputs

  @tf.function
  def attack_batch(batch):
    return strategy.run(attack_replica_batch, args=batch)

  batches = _numbered_batches(dataset, num_examples, batch_size)
  num_batches = int(batches.cardinality())
  bar = keras.utils.Progbar(num_batches if num_batches >= 0 else None, unit_name='batch',
                            verbose=1 if progress else 0, stateful_metrics=['accuracy'])
  collected = {}
  num_correct = num_seen = num_done = 0
  for batch in strategy.experimental_distribute_dataset(batches):
    outputs = {key: np.concatenate([np.asarray(t) for t in
                                    strategy.experimental_local_results(value)])
               for key, value in attack_batch(batch).items()}
    # Check before scoring: a broken attack must fail, not report a good number.
    check_adversarial(outputs.pop('images'), outputs['adversarial'], eps, spec.norm)
    if not keep_adversarial:
      del outputs['adversarial']
    for key, value in outputs.items():
      collected.setdefault(key, []).append(value)
    real = outputs['example_ids'] >= 0
    num_correct += int(outputs['correct'][real].sum())
    num_seen += int(real.sum())
    num_done += 1
    bar.update(num_done, values=[('accuracy', 100.0 * num_correct / num_seen)])
  if bar.target is None:
    bar.update(num_done, finalize=True)

  if not collected:
    raise ValueError('The dataset has no examples.')
  results = {key: np.concatenate(value) for key, value in collected.items()}
  example_ids = results.pop('example_ids')
  real = np.flatnonzero(example_ids >= 0)  # drop the padding
  order = real[np.argsort(example_ids[real], kind='stable')]
  results = {key: value[order] for key, value in results.items()}
  result = AttackResult(name=spec.name, **results)
  logging.info('%s: %.2f%% (%d of %d)', spec.name, result.accuracy,
               int(result.correct.sum()), len(result.correct))
  return result


def attack_results(model, dataset, attacks=DEFAULT_ATTACKS, eps=LINF_EPS, restarts=1,
                   num_examples=None, seed=0, strategy=None, progress=True, *,
                   batch_size=100, step_size=None, l2_eps=None):
  """Runs each attack over the dataset (`attack_dataset`), 'clean' first.

  Args:
    model: a Keras classifier or a callable images -> logits (see `attack_dataset`).
    dataset: (image, label) pairs, batched or not, or a `data.DatasetSplit`.
    attacks: attack names (see the module docstring) or `AttackSpec`s; 'clean' is always
      run, as it belongs to every worst case.
    eps: the L-inf radius on the [0, 1] scale.
    restarts: random restarts of the PGD and APGD attacks (and of each attack of the
      AutoAttack ensembles).
    num_examples: evaluate the first this many (None: all).
    seed: fixes every random start.
    strategy: an optional `tf.distribute.Strategy`.
    progress: show progress bars.
    batch_size: global batch size.
    step_size: PGD step size (None: eps / 4, i.e. 2/255 at 8/255).
    l2_eps: the L2 radius, needed for L2 attacks.

  Returns:
    {attack name: `AttackResult`}, in the order run.
  """
  specs = [parse_attack(a) if isinstance(a, str) else a for a in attacks]
  for spec in specs:
    _registered_core(spec)  # fails before any work if not registered
  if not any(spec.method == 'clean' for spec in specs):
    specs.insert(0, parse_attack('clean'))
  if any(spec.norm == 'l2' and spec.method != 'clean' for spec in specs) and l2_eps is None:
    raise ValueError('L2 attacks need l2_eps.')
  results = {}
  for spec in specs:
    radius = l2_eps if spec.norm == 'l2' and spec.method != 'clean' else eps
    step = step_size if spec.norm == 'linf' else None
    result = attack_dataset(model, dataset, spec, radius, step, restarts, num_examples, seed,
                            strategy, progress, batch_size)
    if result.zero_gradient is not None and result.zero_gradient.any():
      logging.warning(
          '%d of %d examples have an all-zero input gradient at the clean input: '
          'gradient attacks cannot move them; treat their robustness as unverified.',
          int(result.zero_gradient.sum()), len(result.zero_gradient))
    results[spec.name] = result
  return results


def accuracies(results):
  """{attack name: accuracy %, 'worst_case': accuracy on the examples that neither the
  clean pass nor any L-inf attack broke} for `attack_results`' results; with L2
  attacks, 'worst_case_l2' likewise (and no 'worst_case' unless L-inf attacks ran too:
  the threat models differ)."""
  unbroken, attacked_norms = {}, set()
  for name, result in results.items():
    spec = parse_attack(name)
    if spec.method != 'clean':
      attacked_norms.add(spec.norm)
    for norm in (('linf', 'l2') if spec.method == 'clean' else (spec.norm,)):
      unbroken[norm] = unbroken.get(norm, result.correct) & result.correct
  accuracy = {name: result.accuracy for name, result in results.items()}
  if 'linf' in attacked_norms or not attacked_norms:
    accuracy['worst_case'] = 100.0 * float(np.mean(unbroken['linf']))
  if 'l2' in attacked_norms:
    accuracy['worst_case_l2'] = 100.0 * float(np.mean(unbroken['l2']))
  return accuracy


def robust_accuracy(model, dataset, attacks=DEFAULT_ATTACKS, eps=LINF_EPS, restarts=1,
                    num_examples=None, seed=0, strategy=None, progress=True, *,
                    batch_size=100, step_size=None, l2_eps=None):
  """Accuracy in percent under each attack and in the worst case per example: the
  `accuracies` of `attack_results` (same arguments)."""
  return accuracies(attack_results(model, dataset, attacks, eps, restarts, num_examples,
                                   seed, strategy, progress, batch_size=batch_size,
                                   step_size=step_size, l2_eps=l2_eps))
