"""AutoAttack's sanity checks (its checks.py), as warning messages: probabilities instead
of logits, a random model, (near-)zero input gradients, and Square breaking points the
white-box attacks could not. Apart from the ensemble because they judge the model and
the attacks' results, and attack nothing themselves.
"""

import numpy as np
import tensorflow as tf

from igam_tf.attacks import ops

# The thresholds: AutoAttack's (checks.py) where it has one.
PROBABILITY_TOLERANCE = 1e-5  # rows within this of a probability vector
RANDOMNESS_TOLERANCE = 1e-4  # L2 distance of L2-normalized outputs of two calls
RANDOMNESS_CALLS = 5
SQUARE_TOLERANCE = 0.002  # fraction of points Square may break after the others
FLAT_MARGIN_TOLERANCE = 1e-6  # relative change of the margin over the eps ball
CHECK_EXAMPLES = 256  # examples of the probability and randomness checks


def check_model(model, images, labels, eps, calls=RANDOMNESS_CALLS):
  """AutoAttack's checks of the model on a batch: probabilities instead of logits, a
  random model, and (near-)zero input gradients.

  Args:
    model: a Keras classifier or a callable images -> logits.
    images: float [B, H, W, C] in [0, 1].
    labels: int [B].
    eps: the L-inf radius (sets what a near-zero gradient is).
    calls: forward passes compared by the randomness check.

  Returns:
    A list of warning messages, empty when nothing looks wrong.
  """
  images = tf.cast(images, tf.float32)
  labels = tf.cast(labels, tf.int64)
  outputs = [ops.logits_of(model, images).numpy() for _ in range(calls)]
  messages = []
  message = probability_warning(outputs[0])
  if message:
    messages.append(message)
  message = randomness_warning(outputs, labels.numpy())
  if message:
    messages.append(message)
  zero, flat = gradient_flags(model, images, labels, eps)
  message = gradient_warning(zero.numpy(), flat.numpy())
  if message:
    messages.append(message)
  return messages


def probability_warning(outputs, tolerance=PROBABILITY_TOLERANCE):
  """A warning if every row of the model's outputs is a probability vector."""
  outputs = np.asarray(outputs, np.float64)
  if (outputs.min() > -tolerance and outputs.max() < 1 + tolerance
      and np.all(np.abs(outputs.sum(axis=-1) - 1) < tolerance)):
    return ('The model\'s outputs look like probabilities (non-negative rows summing to '
            '1): attack the logits, not softmax outputs, or the losses saturate and the '
            'evaluation overestimates robustness.')
  return None


def randomness_warning(outputs, labels, tolerance=RANDOMNESS_TOLERANCE):
  """A warning if calls of the model on the same inputs disagree: in their number of
  correct predictions, or in their L2-normalized outputs by more than `tolerance`."""
  outputs = [np.asarray(o, np.float64) for o in outputs]
  normalized = [o / (np.linalg.norm(o, axis=-1, keepdims=True) + 1e-10) for o in outputs]
  difference = max((np.linalg.norm(a - b, axis=-1).max()
                    for i, a in enumerate(normalized) for b in normalized[i + 1:]),
                   default=0.0)
  counts = {int(np.sum(np.argmax(o, axis=-1) == labels)) for o in outputs}
  if len(counts) > 1 or difference > tolerance:
    return (f'The model is random: {len(outputs)} calls on the same inputs differ (outputs '
            f'by up to {difference:.3g} after normalization, correct predictions '
            f'{sorted(counts)}). AutoAttack\'s standard version assumes a deterministic '
            f'model; use expectation over transformations (its "rand" version).')
  return None


def gradient_flags(model, images, labels, eps, tolerance=FLAT_MARGIN_TOLERANCE):
  """Per example: (the cross-entropy input gradient is exactly zero, as AutoAttack
  checks; the margin's gradient is near zero: a step to the eps ball's corner along it
  would change the margin by at most `tolerance` of max(|margin|, 1)). A model with no
  input gradient at all flags every example."""
  with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
    tape.watch(images)
    logits = ops.logits_of(model, images)
    cross_entropy = tf.reduce_sum(ops.per_example_loss(logits, labels, 'ce'))
    margins = ops.margin(logits, labels)
    total_margin = tf.reduce_sum(margins)
  axes = list(range(1, images.shape.rank))
  flags = []
  for target in (cross_entropy, total_margin):
    gradient = tape.gradient(target, images)
    flags.append(tf.zeros_like(images) if gradient is None else gradient)
  del tape
  zero = tf.reduce_max(tf.abs(flags[0]), axis=axes) == 0
  change = tf.cast(eps, tf.float32) * tf.reduce_sum(tf.abs(flags[1]), axis=axes)
  flat = change <= tolerance * tf.maximum(tf.abs(margins), 1.0)
  return zero, flat


def gradient_warning(zero, flat):
  """A warning if any example has a zero or near-zero input gradient."""
  zero, flat = np.asarray(zero, bool), np.asarray(flat, bool)
  if not (zero.any() or flat.any()):
    return None
  return (f'{int(zero.sum())} of {zero.size} points have an all-zero cross-entropy input '
          f'gradient and {int(flat.sum())} a near-zero margin gradient: gradient-based '
          f'attacks cannot move them, so their robustness is not verified (gradient '
          f'masking?); trust only the gradient-free attacks there, or attack adaptively.')


def square_warning(correct_before, correct_after, tolerance=SQUARE_TOLERANCE):
  """A warning if Square breaks more than `tolerance` (a fraction of all points) of the
  points the white-box attacks left unbroken: a sign of gradient masking.

  Args:
    correct_before: bool [N], correct after the white-box attacks.
    correct_after: bool [N], correct after them and Square.
    tolerance: AutoAttack's threshold, 0.2 percentage points.
  """
  correct_before = np.asarray(correct_before, bool)
  correct_after = np.asarray(correct_after, bool)
  broken = int(np.sum(correct_before & ~correct_after))
  if correct_before.size and broken / correct_before.size > tolerance:
    return (f'Square (gradient-free) broke {broken} of {correct_before.size} points '
            f'({100 * broken / correct_before.size:.2f}%) that the white-box attacks did '
            f'not: their gradients mislead them (gradient masking?). Do not trust the '
            f'white-box numbers; run Square with more queries and restarts, or an '
            f'adaptive attack.')
  return None

