"""The Square Attack, L-inf (Andriushchenko et al., ECCV 2020), AutoAttack's fourth
attack: score-based, it never asks for a gradient, so it still works where gradients are
masked. `square` runs `compiled_square`, traced once per model and input shape.

Vertical stripes of +-eps to start, then one random square of side sqrt(p * H * W) per
query, kept if it lowers the margin z_y - max_{i!=y} z_i; p starts at 0.8 and halves once
the iteration passes 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000. As in
AutoAttack's standard version (`resc_schedule=False`), this 10000-iteration schedule is
not rescaled to the budget of 5000 queries: p ends at 0.8 / 128 (squares of 3 pixels on
32x32).
"""

import numpy as np
import tensorflow as tf

from igam_tf.attacks import ops

SQUARE_P_INIT = 0.8
# Square's p halves once the iteration passes each of these (the authors' p_selection):
# a schedule of 10000 iterations, used as is by AutoAttack's standard version (its
# SquareAttack has resc_schedule=False), or rescaled to the budget on request.
SQUARE_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
SQUARE_SCHEDULE_LENGTH = 10000
# Square's random draws for an example, apart from the other attacks' (see example_seeds).
SQUARE_STREAM = 3 << 20


def square_fraction(iteration, queries, p_init=SQUARE_P_INIT, rescale=False):
  """Square's p at a 0-based iteration (the authors' `p_selection`): p_init halved once
  for each of SQUARE_P_HALVINGS the iteration has passed.

  AutoAttack's standard version uses the iteration as is (`resc_schedule=False`): with
  5000 queries p never goes below its value at iteration 5000, p_init / 128. With
  `rescale` (a bool or a bool tensor) the iteration first becomes
  int(iteration / queries * 10000), so the whole schedule fits any budget.
  """
  iteration = tf.cast(iteration, tf.int64)
  scaled = iteration * SQUARE_SCHEDULE_LENGTH // tf.maximum(tf.cast(queries, tf.int64), 1)
  position = tf.where(tf.cast(rescale, tf.bool), scaled, iteration)
  halvings = tf.reduce_sum(tf.cast(position > tf.constant(SQUARE_P_HALVINGS, tf.int64),
                                   tf.float32))
  return tf.cast(p_init, tf.float32) * tf.pow(0.5, halvings)


def square_size(fraction, height, width):
  """The side of a square covering `fraction` of the image: round(sqrt(p * H * W)),
  at least 1 and at most min(H, W)."""
  area = tf.cast(fraction, tf.float32) * tf.cast(height * width, tf.float32)
  side = tf.cast(tf.round(tf.sqrt(area)), tf.int32)
  return tf.clip_by_value(side, 1, tf.minimum(height, width))


def square_run(model, images, labels, eps, queries, p_init, seeds, rescale=False):
  """One Square Attack run (L-inf), on points the model classifies correctly; `rescale`
  as `square_fraction` (False in AutoAttack's standard version).

  Returns (the point of lowest margin found, its margin).
  """
  height, width, channels = (int(d) for d in images.shape[1:])
  # Every random number an example will use, drawn up front from its own seed.
  draws, stripes = tf.map_fn(
      lambda seed: (tf.random.stateless_uniform([queries, 2 + channels], seed),
                    tf.random.stateless_uniform(
                        [width, channels],
                        tf.random.experimental.stateless_fold_in(seed, 1))),
      seeds, fn_output_signature=(tf.TensorSpec([None, 2 + channels], tf.float32),
                                  tf.TensorSpec([width, channels], tf.float32)))
  stripes = tf.where(stripes < 0.5, -1.0, 1.0)[:, None]  # vertical stripes of +-eps
  best = tf.clip_by_value(images + eps * stripes, 0.0, 1.0)
  best_margin = ops.margin(ops.logits_of(model, best), labels)
  rows = tf.range(height)[None]
  columns = tf.range(width)[None]
  iteration = tf.constant(0)
  while iteration < queries and tf.reduce_any(best_margin > 0):
    active = tf.where(best_margin > 0)[:, 0]  # only unbroken points are queried
    x, y, current, current_margin = ops.gather(active, images, labels, best, best_margin)
    draw = tf.gather(tf.gather(draws, iteration, axis=1), active)
    side = square_size(square_fraction(iteration, queries, p_init, rescale), height, width)
    top = tf.minimum(tf.cast(draw[:, 0] * tf.cast(height - side + 1, tf.float32), tf.int32),
                     height - side)
    left = tf.minimum(tf.cast(draw[:, 1] * tf.cast(width - side + 1, tf.float32), tf.int32),
                      width - side)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
    in_columns = (columns >= left[:, None]) & (columns < left[:, None] + side)
    window = in_rows[:, :, None, None] & in_columns[:, None, :, None]
    signs = tf.where(draw[:, 2:] < 0.5, -1.0, 1.0)[:, None, None]
    # Inside the square every pixel moves to a vertex of the eps ball.
    candidate = tf.clip_by_value(tf.where(window, x + eps * signs, current), 0.0, 1.0)
    candidate_margin = ops.margin(ops.logits_of(model, candidate), y)
    improved = candidate_margin < current_margin
    best = ops.scatter(best, active, ops.where(improved, candidate, current))
    best_margin = ops.scatter(best_margin, active,
                              tf.where(improved, candidate_margin, current_margin))
    iteration += 1
  return best, best_margin


def square_core(model, images, labels, eps, queries, restarts, seed, example_ids, p_init,
                rescale=False):
  """Square with restarts on the points not yet misclassified. Returns a misclassified
  point where one was found, else the point of lowest margin. Unchecked."""
  broken = ops.misclassified(ops.logits_of(model, images), labels)
  best = images
  best_margin = tf.fill(tf.shape(labels), np.inf)
  restart = tf.constant(0)
  while restart < restarts and tf.reduce_any(~broken):
    active = tf.where(~broken)[:, 0]
    x, y, ids, previous_margin = ops.gather(active, images, labels, example_ids, best_margin)
    seeds = ops.example_seeds(seed, SQUARE_STREAM + restart, ids)
    adversarial, found_margin = square_run(model, x, y, eps, queries, p_init, seeds,
                                           rescale)
    broken_now = ops.misclassified(ops.logits_of(model, adversarial), y)
    take = broken_now | (found_margin < previous_margin)
    best = ops.scatter(best, active, ops.where(take, adversarial, tf.gather(best, active)))
    best_margin = ops.scatter(best_margin, active,
                              tf.where(take, found_margin, previous_margin))
    broken = ops.scatter(broken, active, broken_now)
    restart += 1
  return best



compiled_square = tf.function(square_core)


def square(model, images, labels, eps, queries=5000, p_init=SQUARE_P_INIT, restarts=1,
           seed=0, example_ids=None, rescale_schedule=False):
  """Square Attack, L-inf (Andriushchenko et al., ECCV 2020), with AutoAttack's settings.

  The squares shrink on the 10000-iteration schedule of `square_fraction`, not rescaled
  to `queries` (AutoAttack's standard version) unless `rescale_schedule`.

  Uses only the model's outputs, never a gradient. Each example gets its own squares
  and signs (AutoAttack's code shares them across the batch; the paper draws them per
  image), and stops being queried once misclassified. A square's corner is uniform over
  every position that keeps it inside the image, as in the paper (AutoAttack's code
  never uses the last one, so its first large squares miss the last rows and columns).

  Args:
    model, images, labels, eps, seed, example_ids: as `apgd_t`.
    queries: iterations, one model query each, after the initial one.
    p_init: the initial fraction of the image a square covers.
    restarts: runs on the points still classified correctly.
    rescale_schedule: fit the whole schedule of p to `queries` (the authors'
      `resc_schedule=True`).

  Returns:
    float32 adversarial images, checked against the threat model.
  """
  return ops.run_linf_core(compiled_square, model, images, labels, eps, queries, restarts,
                           seed, example_ids, tf.cast(p_init, tf.float32),
                           tf.constant(bool(rescale_schedule)))
