"""The operations every attack shares: the model's logits and losses, the threat model's
geometry (projection, per-example noise from stateless seeds), and the checks every
adversarial example passes before it is returned or scored. A leaf: it imports no other
module of the package, and every attack family builds on it.

Randomness is stateless and depends only on (seed, run, example id), so a result repeats
exactly and does not depend on how examples are batched or split across replicas.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf

LINF_EPS = 8 / 255  # the paper's CIFAR-10 threat model
NORMS = ('linf', 'l2')
LOSSES = ('ce', 'dlr')
BOUND_TOLERANCE = 1e-6  # float32 rounding of x + delta - x stays far below this
NUM_TARGETS = 9  # target classes of APGD-T and FAB-T

_LOSS_ALIASES = {'ce': 'ce', 'xent': 'ce', 'dlr': 'dlr'}


class AttackError(RuntimeError):
  """An attack produced examples outside its threat model (a bug, never a result)."""


# The model and its losses.


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
  a callable (logits, labels) -> [B] losses (e.g. APGD-T's targeted DLR)."""
  if callable(loss):
    return loss(logits, labels)
  loss = canonical_loss(loss)
  if loss == 'ce':
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
  if logits.shape[-1] is not None and logits.shape[-1] < 3:
    raise ValueError(f'The DLR loss needs at least 3 classes, got {logits.shape[-1]}')
  is_label = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
  true_logit = tf.reduce_max(tf.where(is_label, logits, -np.inf), axis=-1)
  best_other = tf.reduce_max(tf.where(is_label, -np.inf, logits), axis=-1)
  ranked = tf.sort(logits, axis=-1, direction='DESCENDING')
  return -(true_logit - best_other) / (ranked[:, 0] - ranked[:, 2] + 1e-12)


def canonical_loss(loss):
  """'ce' or 'dlr' for a loss name ('xent' is 'ce')."""
  if loss not in _LOSS_ALIASES:
    raise ValueError(f'loss must be one of {LOSSES} (or xent for ce), got {loss!r}')
  return _LOSS_ALIASES[loss]


def loss_gradient(model, images, labels, loss):
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


def misclassified(logits, labels):
  """bool [B]: the argmax is not the label."""
  return tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int64), labels)


def margin(logits, labels):
  """z_y - max_{i!=y} z_i: negative once the example is misclassified."""
  is_label = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
  true_logit = tf.reduce_max(tf.where(is_label, logits, -np.inf), axis=-1)
  return true_logit - tf.reduce_max(tf.where(is_label, -np.inf, logits), axis=-1)


def target_classes(logits, labels, num_targets=NUM_TARGETS):
  """int64 [B, T]: the classes other than the label by decreasing logit, T =
  min(num_targets, K - 1). For a correctly classified point these are AutoAttack's
  targets (the 2nd to 10th highest logits)."""
  num_classes = tf.shape(logits)[-1]
  is_label = tf.one_hot(labels, num_classes, on_value=True, off_value=False)
  ranked = tf.argsort(tf.where(is_label, -np.inf, logits), axis=-1, direction='DESCENDING',
                      stable=True)
  count = tf.minimum(tf.cast(num_targets, tf.int32), num_classes - 1)
  return tf.cast(ranked[:, :count], tf.int64)


# Per-example tensor plumbing.


def per_example(values, like):
  """Reshapes [B] values to broadcast against `like` [B, ...]."""
  return tf.reshape(values, [-1] + [1] * (like.shape.rank - 1))


def where(condition, x, y):
  """tf.where with a [B] condition over [B, ...] tensors."""
  return tf.where(per_example(condition, x), x, y)


def gather(indices, *tensors):
  """The rows `indices` of each tensor."""
  return [tf.gather(tensor, indices) for tensor in tensors]


def scatter(tensor, indices, updates):
  """`tensor` with the rows `indices` replaced by `updates`."""
  return tf.tensor_scatter_nd_update(tensor, indices[:, None], updates)


# The threat model's geometry.


def l2_norm(values):
  """Per-example L2 norms, shaped to broadcast against `values`."""
  axes = list(range(1, values.shape.rank))
  return tf.sqrt(tf.reduce_sum(tf.square(values), axis=axes, keepdims=True))


def ascent_direction(gradient, norm):
  """The steepest ascent direction of unit norm: the sign (L-inf) or the normalized
  gradient (L2)."""
  if norm == 'linf':
    return tf.sign(gradient)
  return gradient / (l2_norm(gradient) + 1e-12)


def project(adversarial, images, eps, norm):
  """Projects onto the eps ball around `images`, then onto the box [0, 1]."""
  if norm == 'linf':
    adversarial = tf.clip_by_value(adversarial, images - eps, images + eps)
  else:
    delta = adversarial - images
    delta *= tf.math.divide_no_nan(eps, tf.maximum(l2_norm(delta), eps))  # 0 at eps 0
    adversarial = images + delta
  # Clipping to the box only shrinks each coordinate of delta, so it stays in the ball.
  return tf.clip_by_value(adversarial, 0.0, 1.0)


def example_seeds(seed, run, example_ids):
  """[B, 2] stateless seeds, one per (seed, run, example id); `run` is a restart, offset
  by a stream per attack where attacks must draw apart."""
  example_ids = tf.cast(example_ids, tf.int64)
  run = tf.cast(run, tf.int64)
  return tf.stack([tf.fill(tf.shape(example_ids), tf.cast(seed, tf.int64)),
                   run * 2**32 + example_ids], axis=1)


def per_example_noise(images, seeds, distribution):
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


# Inputs and settings.


def batch_inputs(images, labels, example_ids):
  """(float32 images, int64 labels [B], int64 example ids: 0..B-1 unless given)."""
  images = tf.cast(images, tf.float32)
  labels = tf.cast(labels, tf.int64)
  if labels.shape.rank != 1:
    raise ValueError(f'labels must be class indices of shape [batch], got {labels.shape}')
  if example_ids is None:
    example_ids = tf.range(tf.shape(labels, out_type=tf.int64)[0])
  return images, labels, tf.cast(example_ids, tf.int64)


def check_settings(eps, step_size=None, steps=None, restarts=1):
  """Checks the settings given as numbers (tensors pass: they may be symbolic)."""
  for name, value, low in (('eps', eps, 0), ('step_size', step_size, 0), ('steps', steps, 0),
                           ('restarts', restarts, 1)):
    if isinstance(value, numbers.Real) and value < low:
      raise ValueError(f'{name} must be >= {low}, got {value}')


def image_batch_inputs(images, labels, eps, steps, restarts, example_ids, seed):
  """Checks and converts the arguments of an attack that needs a static image shape:
  (images, labels, example_ids, eps, restarts, seed), all tensors."""
  check_settings(eps, None, steps, restarts)
  images, labels, example_ids = batch_inputs(images, labels, example_ids)
  if images.shape.rank != 4 or None in images.shape[1:]:
    raise ValueError(f'images must be [batch, height, width, channels] with a known image '
                     f'shape, got {images.shape}')
  return (images, labels, example_ids, tf.cast(eps, tf.float32),
          tf.cast(restarts, tf.int32), tf.cast(seed, tf.int64))


def run_linf_core(core, model, images, labels, eps, budget, restarts, seed, example_ids,
                  *settings):
  """The checked examples of a compiled L-inf core(model, images, labels, eps, budget,
  restarts, seed, example_ids, *settings) (APGD-T, FAB-T, Square) on one batch; `budget`
  is its iterations or queries, `settings` its other tensors."""
  images, labels, example_ids, eps_t, restarts_t, seed_t = image_batch_inputs(
      images, labels, eps, budget, restarts, example_ids, seed)
  adversarial = core(model, images, labels, eps_t, tf.cast(budget, tf.int32), restarts_t,
                     seed_t, example_ids, *settings)
  return checked(images, adversarial, eps, 'linf')


# Bounds checks: every adversarial example passes one before it is returned or scored.


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


def checked(images, adversarial, eps, norm):
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
