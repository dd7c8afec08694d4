"""AutoAttack (Croce & Hein, ICML 2020) in TensorFlow, L-inf, on the [0, 1] pixel scale.

The attacks AutoAttack adds to `attacks.apgd` (APGD-CE), with its standard settings:
  APGD-T   Auto-PGD on the targeted DLR loss
           -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12), one run of 100
           iterations per target class: the 9 (or K - 1) classes of highest clean logit
           other than the label. It needs 4 or more classes.
  FAB-T    the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), same
           targets, 100 iterations, alpha_max 0.1, eta 1.05, beta 0.9. It looks for the
           smallest perturbation; a point counts as broken only if FAB's point lies
           within eps.
  Square   the score-based Square Attack (Andriushchenko et al., ECCV 2020): vertical
           stripes of +-eps to start, then one random square of side sqrt(p * H * W) per
           query, kept if it lowers the margin z_y - max_{i!=y} z_i; p starts at 0.8 and
           halves once the iteration passes 10, 50, 200, 500, 1000, 2000, 4000, 6000 and
           8000. As in AutoAttack's standard version (`resc_schedule=False`), this
           10000-iteration schedule is not rescaled to the budget of 5000 queries: p ends
           at 0.8 / 128 (squares of 3 pixels on 32x32). It never asks for a gradient, so it
           still works where gradients are masked.
The ensembles run their attacks in sequence, each on the points no earlier one broke:
  standard (attack 'autoattack')       APGD-CE, APGD-T, FAB-T, Square
  fast     (attack 'autoattack_fast')  APGD-CE, APGD-T
A point is robust only if it survives all of them: the ensemble's accuracy is at most
that of each part. Only the standard version is AutoAttack; the fast one is reported as
"AutoAttack (fast: APGD-CE, APGD-T)" (`ENSEMBLE_NAMES`), never as plain AutoAttack.

Each attack's randomness depends only on (seed, run, example id), as in `attacks`, so
results repeat exactly and do not depend on the batching or on a `tf.distribute`
strategy; the ensemble's APGD-CE is `attacks.apgd` with the same seed. Every example is
checked against the threat model before it is scored.

Entry points: the batch functions `apgd_t`, `fab_t`, `square` and `ensemble`; the names
above for `attacks.robust_accuracy` / `attack_dataset` (importing this module registers
them); and `run_autoattack`, which runs
an ensemble over a dataset attack by attack (as the authors' code does: the examples are
loaded once, so every attack sees the examples the clean pass scored) and returns
per-example results after each attack, the time each took, and AutoAttack's sanity
checks as warnings: (near-)zero input gradients, probabilities instead of logits, a
random model, and Square breaking points the white-box attacks could not (a sign of
gradient masking).
"""

import dataclasses
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from igam_tf import attacks

# This module extends attacks.py and shares its private helpers (seeds, APGD's loop).
# pylint: disable=protected-access

NUM_TARGETS = 9
SQUARE_P_INIT = 0.8
# Square's p halves once the iteration passes each of these (the authors' p_selection):
# a schedule of 10000 iterations, used as is by AutoAttack's standard version (its
# SquareAttack has resc_schedule=False), or rescaled to the budget on request.
SQUARE_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
SQUARE_SCHEDULE_LENGTH = 10000
VERSIONS = {'standard': ('apgd_ce', 'apgd_t', 'fab_t', 'square'),
            'fast': ('apgd_ce', 'apgd_t')}
# How reports and progress lines name each version: only the standard one is AutoAttack.
ENSEMBLE_NAMES = {'standard': 'AutoAttack', 'fast': 'AutoAttack (fast: APGD-CE, APGD-T)'}
STAGE_NAMES = {'apgd_ce': 'APGD-CE', 'apgd_t': 'APGD-T', 'fab_t': 'FAB-T', 'square': 'Square'}
_VERSION_OF_METHOD = {'autoattack': 'standard', 'autoattack_fast': 'fast'}
_WHITE_BOX = ('apgd_ce', 'apgd_t', 'fab_t')

# The sanity checks' thresholds: AutoAttack's (checks.py) where it has one.
PROBABILITY_TOLERANCE = 1e-5  # rows within this of a probability vector
RANDOMNESS_TOLERANCE = 1e-4  # L2 distance of L2-normalized outputs of two calls
RANDOMNESS_CALLS = 5
SQUARE_TOLERANCE = 0.002  # fraction of points Square may break after the others
FLAT_MARGIN_TOLERANCE = 1e-6  # relative change of the margin over the eps ball
CHECK_EXAMPLES = 256  # examples of the probability and randomness checks

# Separate streams keep the attacks' random draws for an example apart.
_APGD_T_STREAM = 1 << 20
_FAB_STREAM = 2 << 20
_SQUARE_STREAM = 3 << 20


@dataclasses.dataclass(frozen=True)
class Settings:
  """An ensemble's settings; the defaults are AutoAttack's standard version.

  Attributes:
    apgd_steps: APGD-CE iterations.
    apgd_t_steps: APGD-T iterations per target.
    fab_steps: FAB-T iterations per target.
    square_queries: Square's queries.
    square_rescale: rescale Square's 10000-iteration schedule of p to `square_queries`
      (the authors' `resc_schedule=True`); False in AutoAttack's standard version.
    num_targets: target classes of APGD-T and FAB-T (at most K - 1 are used).
    rho: APGD's step-halving threshold.
    p_init: Square's initial fraction of pixels per square.
    alpha_max: FAB's largest step towards the clean image.
    eta: FAB's overshoot.
    beta: FAB's backward step.
  """
  apgd_steps: int = attacks.APGD_STEPS
  apgd_t_steps: int = attacks.AUTOATTACK_METHODS['apgd_t']
  fab_steps: int = attacks.AUTOATTACK_METHODS['fab_t']
  square_queries: int = attacks.AUTOATTACK_METHODS['square']
  square_rescale: bool = False
  num_targets: int = NUM_TARGETS
  rho: float = 0.75
  p_init: float = SQUARE_P_INIT
  alpha_max: float = 0.1
  eta: float = 1.05
  beta: float = 0.9

  def tensors(self):
    """The settings as tensors, so that changing them does not retrace."""
    dtypes = {int: tf.int32, bool: tf.bool, float: tf.float32}
    return {field.name: tf.constant(getattr(self, field.name), dtypes[field.type])
            for field in dataclasses.fields(self)}


STANDARD = Settings()


# Losses, targets and Square's schedule.


def margin(logits, labels):
  """z_y - max_{i!=y} z_i: negative once the example is misclassified."""
  is_label = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
  true_logit = tf.reduce_max(tf.where(is_label, logits, -np.inf), axis=-1)
  return true_logit - tf.reduce_max(tf.where(is_label, -np.inf, logits), axis=-1)


def targeted_dlr_loss(logits, labels, targets):
  """APGD-T's loss -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12), per example."""
  if logits.shape[-1] is not None and logits.shape[-1] < 4:
    raise ValueError(f'The targeted DLR loss needs at least 4 classes, got '
                     f'{logits.shape[-1]}')
  true_logit = tf.gather(logits, labels, batch_dims=1)
  target_logit = tf.gather(logits, targets, batch_dims=1)
  ranked = tf.sort(logits, axis=-1, direction='DESCENDING')
  return -(true_logit - target_logit) / (
      ranked[:, 0] - (ranked[:, 2] + ranked[:, 3]) / 2 + 1e-12)


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


# The attacks' cores: unchecked, traced into the caller's function.


def _gather(indices, *tensors):
  return [tf.gather(tensor, indices) for tensor in tensors]


def _scatter(tensor, indices, updates):
  return tf.tensor_scatter_nd_update(tensor, indices[:, None], updates)


def _apgd_t_core(model, images, labels, eps, steps, restarts, seed, example_ids,
                 num_targets, rho):
  """APGD-T: for each target (and restart), APGD on the targeted DLR loss of the points
  not yet misclassified. Returns a misclassified point where one was found, else the
  point of highest loss."""
  clean_logits = attacks.logits_of(model, images)
  targets = target_classes(clean_logits, labels, num_targets)
  fooled = attacks._misclassified(clean_logits, labels)
  best = images
  best_loss = tf.fill(tf.shape(labels), -np.inf)
  runs = tf.shape(targets, out_type=tf.int32)[1] * restarts
  run = tf.constant(0)
  # The loop stops once every point is broken: no model call ever gets an empty batch.
  while run < runs and tf.reduce_any(~fooled):
    active = tf.where(~fooled)[:, 0]
    x, y, ids, previous_loss = _gather(active, images, labels, example_ids, best_loss)
    target = tf.gather(targets[:, run // restarts], active)
    seeds = attacks._example_seeds(seed, _APGD_T_STREAM + run, ids)
    adversarial, fooled_now, loss = attacks._apgd_run(
        model, x, y, eps, steps, seeds, rho, 'linf',
        lambda logits, y, target=target: targeted_dlr_loss(logits, y, target))
    take = fooled_now | (loss > previous_loss)
    best = _scatter(best, active, attacks._where(take, adversarial, tf.gather(best, active)))
    best_loss = _scatter(best_loss, active, tf.where(take, loss, previous_loss))
    fooled = _scatter(fooled, active, fooled_now)
    run += 1
  return best


def project_linf(points, weights, offsets):
  """FAB's L-inf projection onto a hyperplane inside the box: for each row, the step d
  of smallest L-inf norm with <w, x + d> = b and x + d in [0, 1]; where the box keeps
  the hyperplane out of reach, the step to the box's corner closest to it.

  A port of `projection_linf` in the authors' fab_projections.py: sort the coordinates
  by how far they can move, then binary-search the norm at which the hyperplane is met.

  Args:
    points: float32 [N, D], x.
    weights: float32 [N, D], w.
    offsets: float32 [N], b.

  Returns:
    float32 [N, D], d.
  """
  x, w, b = points, weights, offsets
  sign = tf.where(tf.reduce_sum(w * x, axis=1) - b >= 0, 1.0, -1.0)
  w, b = w * sign[:, None], b * sign  # now <w, x> >= b: move to decrease <w, x>
  toward_one = tf.cast(w < 0, tf.float32)  # the box side each coordinate moves to
  nonzero = tf.cast(tf.not_equal(w, 0), tf.float32)
  step = (toward_one - x) * nonzero  # to the box's corner
  room = toward_one - x * (2 * toward_one - 1)  # how far each coordinate can move
  order = tf.argsort(room, axis=1)
  b = b - tf.reduce_sum(w * x, axis=1)
  corner = tf.reduce_sum(w * step, axis=1)  # the change reached at the corner

  descending = tf.reverse(order, axis=[1])
  sorted_w = tf.gather(w, descending, batch_dims=1)
  cumulative_w = tf.cumsum(tf.abs(sorted_w), axis=1)
  cumulative_b = (tf.cumsum(-sorted_w * tf.gather(step, descending, batch_dims=1), axis=1)
                  + corner[:, None])
  least_room = tf.gather(room, order[:, 0], batch_dims=1)
  inside = b - (cumulative_b[:, -1] - cumulative_w[:, -1] * least_room) > 0
  saturating = (b - corner > 0) & ~inside

  dims = int(w.shape[1]) if w.shape[1] is not None else None
  if dims is None:
    raise ValueError('project_linf needs a static number of coordinates.')
  low = tf.zeros_like(b)
  high = tf.fill(tf.shape(b), float(dims - 1))
  for _ in range(int(np.ceil(np.log2(max(dims, 2))))):
    middle = tf.floor((low + high) / 2)
    index = tf.cast(middle, tf.int32)
    current = tf.gather(order, dims - 1 - index, batch_dims=1)
    reached = (tf.gather(cumulative_b, index, batch_dims=1)
               - tf.gather(cumulative_w, index, batch_dims=1)
               * tf.gather(room, current, batch_dims=1))
    above = b - reached > 0
    low = tf.where(above, middle, low)
    high = tf.where(above, high, middle)
  index = tf.cast(low, tf.int32)

  # No coordinate saturates: move every one by the same amount.
  norm_inside = tf.maximum(tf.math.divide_no_nan(b - cumulative_b[:, -1],
                                                 -cumulative_w[:, -1]), 0)[:, None]
  step_inside = (2 * toward_one - 1) * norm_inside
  # Some saturate at the box: the rest move by the norm found by the search.
  norm = tf.maximum(tf.math.divide_no_nan(
      b - tf.gather(cumulative_b, index, batch_dims=1),
      -tf.gather(cumulative_w, index, batch_dims=1)), 0)[:, None]
  step_saturating = (tf.minimum(norm, step) * toward_one
                     + tf.maximum(-norm, step) * (1 - toward_one))
  step = tf.where(inside[:, None], step_inside,
                  tf.where(saturating[:, None], step_saturating, step))
  return step * nonzero


def _fab_run(model, images, labels, targets, start, steps, alpha_max, eta, beta):
  """One targeted FAB-L-inf run (Croce & Hein 2020, Algorithm 1, as the authors' code).

  Returns (the closest misclassified point found, else `images`; its L-inf distance,
  else 1e10).
  """
  batch = tf.shape(images)[0]
  dims = int(np.prod(images.shape[1:]))  # static, as project_linf needs
  flat_images = tf.reshape(images, [batch, dims])
  current = start
  best = images
  distance = tf.fill([batch], 1e10)
  for _ in tf.range(steps):
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(current)
      logits = attacks.logits_of(model, current)
      # f_t - f_y: the linearized boundary between the label and the target.
      gap = (tf.gather(logits, targets, batch_dims=1)
             - tf.gather(logits, labels, batch_dims=1))
      total = tf.reduce_sum(gap)
    gradient = tape.gradient(total, current)
    if gradient is None:
      raise attacks.AttackError('The model gives no gradient with respect to its input '
                                'images.')
    flat_current = tf.reshape(current, [batch, dims])
    weights = tf.reshape(gradient, [batch, dims])
    offsets = tf.reduce_sum(weights * flat_current, axis=1) - gap
    # Project the current point and the clean image onto the linearized boundary.
    projected = project_linf(tf.concat([flat_current, flat_images], 0),
                             tf.concat([weights, weights], 0),
                             tf.concat([offsets, offsets], 0))
    from_current, from_clean = projected[:batch], projected[batch:]
    norms = tf.maximum(tf.reduce_max(tf.abs(projected), axis=1), 1e-8)
    alpha = tf.clip_by_value(norms[:batch] / (norms[:batch] + norms[batch:]), 0.0,
                             alpha_max)[:, None]
    flat_current = tf.clip_by_value(
        (flat_current + eta * from_current) * (1 - alpha)
        + (flat_images + eta * from_clean) * alpha, 0.0, 1.0)
    current = tf.reshape(flat_current, tf.shape(images))
    fooled = attacks._misclassified(attacks.logits_of(model, current), labels)
    reached = tf.reduce_max(tf.abs(flat_current - flat_images), axis=1)
    closer = fooled & (reached < distance)
    best = attacks._where(closer, current, best)
    distance = tf.where(closer, reached, distance)
    # Step back towards the clean image from the points across the boundary.
    current = attacks._where(fooled, images + (current - images) * beta, current)
  return best, distance


def _fab_t_core(model, images, labels, eps, steps, restarts, seed, example_ids,
                num_targets, alpha_max, eta, beta):
  """FAB-T: for each target (and restart) a FAB run on the points not yet broken within
  eps; the first restart starts at the clean image, the others at a random point at
  L-inf distance eps / 2. Returns a misclassified point within eps where one was found,
  else the images."""
  clean_logits = attacks.logits_of(model, images)
  targets = target_classes(clean_logits, labels, num_targets)
  broken = attacks._misclassified(clean_logits, labels)
  best = images
  runs = tf.shape(targets, out_type=tf.int32)[1] * restarts
  run = tf.constant(0)
  while run < runs and tf.reduce_any(~broken):
    active = tf.where(~broken)[:, 0]
    x, y, ids = _gather(active, images, labels, example_ids)
    target = tf.gather(targets[:, run // restarts], active)

    def random_start(x=x, ids=ids):
      noise = attacks._per_example_noise(
          x, attacks._example_seeds(seed, _FAB_STREAM + run, ids), 'uniform')
      scale = tf.reduce_max(tf.abs(noise), axis=[1, 2, 3], keepdims=True)
      return tf.clip_by_value(x + eps / 2 * noise / (scale + 1e-12), 0.0, 1.0)

    start = tf.cond(run % restarts > 0, random_start, lambda x=x: x)
    adversarial, distance = _fab_run(model, x, y, target, start, steps, alpha_max, eta,
                                     beta)
    # Only points within eps count (FAB itself is not bounded by eps).
    success = (distance <= eps) & attacks._misclassified(
        attacks.logits_of(model, adversarial), y)
    best = _scatter(best, active, attacks._where(success, adversarial, tf.gather(best, active)))
    broken = _scatter(broken, active, success)
    run += 1
  return best


def _square_run(model, images, labels, eps, queries, p_init, seeds, rescale=False):
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
  best_margin = margin(attacks.logits_of(model, best), labels)
  rows = tf.range(height)[None]
  columns = tf.range(width)[None]
  iteration = tf.constant(0)
  while iteration < queries and tf.reduce_any(best_margin > 0):
    active = tf.where(best_margin > 0)[:, 0]  # only unbroken points are queried
    x, y, current, current_margin = _gather(active, images, labels, best, best_margin)
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
    candidate_margin = margin(attacks.logits_of(model, candidate), y)
    improved = candidate_margin < current_margin
    best = _scatter(best, active, attacks._where(improved, candidate, current))
    best_margin = _scatter(best_margin, active,
                           tf.where(improved, candidate_margin, current_margin))
    iteration += 1
  return best, best_margin


def _square_core(model, images, labels, eps, queries, restarts, seed, example_ids, p_init,
                 rescale=False):
  """Square with restarts on the points not yet misclassified. Returns a misclassified
  point where one was found, else the point of lowest margin."""
  broken = attacks._misclassified(attacks.logits_of(model, images), labels)
  best = images
  best_margin = tf.fill(tf.shape(labels), np.inf)
  restart = tf.constant(0)
  while restart < restarts and tf.reduce_any(~broken):
    active = tf.where(~broken)[:, 0]
    x, y, ids, previous_margin = _gather(active, images, labels, example_ids, best_margin)
    seeds = attacks._example_seeds(seed, _SQUARE_STREAM + restart, ids)
    adversarial, found_margin = _square_run(model, x, y, eps, queries, p_init, seeds,
                                            rescale)
    broken_now = attacks._misclassified(attacks.logits_of(model, adversarial), y)
    take = broken_now | (found_margin < previous_margin)
    best = _scatter(best, active, attacks._where(take, adversarial, tf.gather(best, active)))
    best_margin = _scatter(best_margin, active,
                           tf.where(take, found_margin, previous_margin))
    broken = _scatter(broken, active, broken_now)
    restart += 1
  return best


def _stage_core(stage, model, images, labels, eps, restarts, seed, example_ids, settings):
  """One of the ensemble's attacks; `settings` holds `Settings.tensors()`."""
  s = settings
  if stage == 'apgd_ce':
    return attacks._apgd_core(
        model, images, labels, eps, s['apgd_steps'], restarts, seed, example_ids, s['rho'],
        norm='linf', loss='ce')
  if stage == 'apgd_t':
    return _apgd_t_core(model, images, labels, eps, s['apgd_t_steps'], restarts, seed,
                        example_ids, s['num_targets'], s['rho'])
  if stage == 'fab_t':
    return _fab_t_core(model, images, labels, eps, s['fab_steps'], restarts, seed,
                       example_ids, s['num_targets'], s['alpha_max'], s['eta'], s['beta'])
  if stage == 'square':
    return _square_core(model, images, labels, eps, s['square_queries'], restarts, seed,
                        example_ids, s['p_init'], s['square_rescale'])
  raise ValueError(f'Unknown AutoAttack stage {stage!r}')


def _stages_for(stages, num_classes):
  """Drops APGD-T for fewer than 4 classes (its loss needs z_pi4)."""
  if num_classes is not None and num_classes < 4 and 'apgd_t' in stages:
    logging.warning('APGD-T needs at least 4 classes (the model has %d): skipped.',
                    num_classes)
    return tuple(stage for stage in stages if stage != 'apgd_t')
  return tuple(stages)


def _ensemble_core(model, images, labels, eps, restarts, seed, example_ids, settings, *,
                   stages):
  """The attacks in sequence, each on the points no earlier one broke. Returns the clean
  image for the points none broke (as AutoAttack)."""
  logits = attacks.logits_of(model, images)
  correct = ~attacks._misclassified(logits, labels)
  adversarial = images
  for stage in _stages_for(stages, logits.shape[-1]):
    active = tf.where(correct)[:, 0]

    def attack(stage=stage, active=active, adversarial=adversarial, correct=correct):
      x, y, ids = _gather(active, images, labels, example_ids)
      found = _stage_core(stage, model, x, y, eps, restarts, seed, ids, settings)
      broken = attacks._misclassified(attacks.logits_of(model, found), y)
      return (_scatter(adversarial, active, attacks._where(broken, found, x)),
              _scatter(correct, active, ~broken))

    adversarial, correct = tf.cond(tf.size(active) > 0, attack,
                                   lambda a=adversarial, c=correct: (a, c))
  return adversarial


_compiled_stage = tf.function(_stage_core)
_compiled_ensemble = tf.function(_ensemble_core)


def adversarial_core(spec, model, images, labels, eps, restarts, seed, example_ids,
                     compiled=True, settings=None):
  """The unchecked adversarial examples of an `attacks.AttackSpec` whose method is one of
  `attacks.AUTOATTACK_METHODS`: registered with `attacks` on import, so that its
  `attack_dataset`, `robust_accuracy` and `run_attack` run these attacks by name.

  The spec's steps set the iterations (queries for square) of a single attack; the
  ensembles use `settings` (default `STANDARD`). `compiled=False` traces the attack into
  the calling function.
  """
  settings = settings or STANDARD
  if spec.method in _VERSION_OF_METHOD:
    core = _compiled_ensemble if compiled else _ensemble_core
    return core(model, images, labels, eps, restarts, seed, example_ids, settings.tensors(),
                stages=VERSIONS[_VERSION_OF_METHOD[spec.method]])
  steps_field = {'apgd_t': 'apgd_t_steps', 'fab_t': 'fab_steps', 'square': 'square_queries'}
  settings = dataclasses.replace(settings, **{steps_field[spec.method]: spec.steps})
  core = _compiled_stage if compiled else _stage_core
  return core(spec.method, model, images, labels, eps, restarts, seed, example_ids,
              settings.tensors())


# Public attacks on one batch.


def _prepare(images, labels, eps, steps, restarts, example_ids, seed):
  attacks._check_settings(eps, None, steps, restarts)
  images, labels, example_ids = attacks._batch_inputs(images, labels, example_ids)
  if images.shape.rank != 4 or None in images.shape[1:]:
    raise ValueError(f'images must be [batch, height, width, channels] with a known image '
                     f'shape, got {images.shape}')
  return (images, labels, example_ids, tf.cast(eps, tf.float32),
          tf.cast(restarts, tf.int32), tf.cast(seed, tf.int64))


def apgd_t(model, images, labels, eps, steps=100, num_targets=NUM_TARGETS, restarts=1,
           seed=0, rho=0.75, example_ids=None):
  """APGD-T (Croce & Hein, ICML 2020): Auto-PGD on the targeted DLR loss, one run of
  `steps` iterations per target class and restart, each on the points still classified
  correctly; a point is broken if any run breaks it.

  Args:
    model: a Keras classifier or a callable images -> logits (4 or more classes).
    images: float [B, H, W, C] in [0, 1].
    labels: int [B].
    eps: L-inf radius on the [0, 1] scale.
    steps: iterations per run.
    num_targets: target classes, those of highest clean logit (at most K - 1 are used).
    restarts: runs per target.
    seed: with `example_ids`, fixes every random start.
    rho: APGD's step-halving threshold.
    example_ids: int [B], each example's id for its randomness (default 0..B-1).

  Returns:
    float32 adversarial images, checked against the threat model.
  """
  images, labels, example_ids, eps_t, restarts_t, seed_t = _prepare(
      images, labels, eps, steps, restarts, example_ids, seed)
  settings = dataclasses.replace(STANDARD, apgd_t_steps=steps, num_targets=num_targets,
                                 rho=rho)
  adversarial = _compiled_stage('apgd_t', model, images, labels, eps_t, restarts_t, seed_t,
                                example_ids, settings.tensors())
  return attacks._checked(images, adversarial, eps, 'linf')


def fab_t(model, images, labels, eps, steps=100, num_targets=NUM_TARGETS, restarts=1,
          alpha_max=0.1, eta=1.05, beta=0.9, seed=0, example_ids=None):
  """FAB-T, L-inf (Croce & Hein, ICML 2020): the targeted Fast Adaptive Boundary attack,
  one run per target class and restart on the points not yet broken. FAB minimizes the
  perturbation without a bound: a point found beyond eps does not count, and the clean
  image is returned for it.

  Args:
    model, images, labels, eps, steps, num_targets, restarts, seed, example_ids: as
      `apgd_t` (restarts after the first start from a random point at distance eps / 2).
    alpha_max: the largest weight of the step from the clean image.
    eta: overshoot of each projection.
    beta: backward step towards the clean image once across the boundary.

  Returns:
    float32 adversarial images, checked against the threat model.
  """
  images, labels, example_ids, eps_t, restarts_t, seed_t = _prepare(
      images, labels, eps, steps, restarts, example_ids, seed)
  settings = dataclasses.replace(STANDARD, fab_steps=steps, num_targets=num_targets,
                                 alpha_max=alpha_max, eta=eta, beta=beta)
  adversarial = _compiled_stage('fab_t', model, images, labels, eps_t, restarts_t, seed_t,
                                example_ids, settings.tensors())
  return attacks._checked(images, adversarial, eps, 'linf')


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
  images, labels, example_ids, eps_t, restarts_t, seed_t = _prepare(
      images, labels, eps, queries, restarts, example_ids, seed)
  settings = dataclasses.replace(STANDARD, square_queries=queries, p_init=p_init,
                                 square_rescale=bool(rescale_schedule))
  adversarial = _compiled_stage('square', model, images, labels, eps_t, restarts_t, seed_t,
                                example_ids, settings.tensors())
  return attacks._checked(images, adversarial, eps, 'linf')


def ensemble(model, images, labels, eps, version='standard', settings=None, restarts=1,
             seed=0, example_ids=None):
  """AutoAttack on one batch: the version's attacks in sequence, each on the points no
  earlier attack broke.

  Args:
    model, images, labels, eps, seed, example_ids: as `apgd_t`.
    version: 'standard' (APGD-CE, APGD-T, FAB-T, Square) or 'fast' (APGD-CE, APGD-T).
    settings: a `Settings` (default `STANDARD`).
    restarts: runs per attack (per target for the targeted ones); 1 in AutoAttack.

  Returns:
    float32 adversarial images, checked against the threat model.
  """
  if version not in VERSIONS:
    raise ValueError(f'version must be one of {tuple(VERSIONS)}, got {version!r}')
  images, labels, example_ids, eps_t, restarts_t, seed_t = _prepare(
      images, labels, eps, 0, restarts, example_ids, seed)
  adversarial = _compiled_ensemble(model, images, labels, eps_t, restarts_t, seed_t,
                                   example_ids, (settings or STANDARD).tensors(),
                                   stages=VERSIONS[version])
  return attacks._checked(images, adversarial, eps, 'linf')


# Sanity checks (AutoAttack's checks.py), as warning messages.


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
  outputs = [attacks.logits_of(model, images).numpy() for _ in range(calls)]
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
    logits = attacks.logits_of(model, images)
    cross_entropy = tf.reduce_sum(attacks.per_example_loss(logits, labels, 'ce'))
    margins = margin(logits, labels)
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


# Datasets.


@dataclasses.dataclass(frozen=True)
class AutoAttackResult:
  """An AutoAttack ensemble over a dataset, in example order.

  Attributes:
    version: 'standard' (AutoAttack) or 'fast' (APGD-CE and APGD-T only: not AutoAttack,
      see `name`).
    eps: the L-inf radius.
    labels: int64 [N].
    correct: bool [N], still correctly classified after every attack.
    after: {'clean', then each attack in order: bool [N] correct after it and all
      before it}.
    seconds: {the same keys: wall-clock seconds it took}.
    warnings: the sanity checks' messages.
    adversarial: float32 [N, H, W, C]: for broken points the example that broke them,
      else the clean image; None unless asked for.
  """
  version: str
  eps: float
  labels: np.ndarray
  correct: np.ndarray
  after: dict
  seconds: dict
  warnings: list
  adversarial: np.ndarray | None = None

  @property
  def name(self):
    """What reports call it: 'AutoAttack' for the standard version only."""
    return ENSEMBLE_NAMES[self.version]

  @property
  def accuracy(self):
    """Robust accuracy in percent."""
    return 100.0 * float(np.mean(self.correct)) if self.correct.size else float('nan')

  @property
  def accuracies(self):
    """{'clean', each attack: accuracy in percent after it (cumulative)}."""
    return {name: 100.0 * float(np.mean(correct)) for name, correct in self.after.items()}

  @property
  def broken_by(self):
    """str [N]: the first attack that broke each point ('clean' if misclassified, '' if
    robust)."""
    names = np.full(self.correct.shape, '', dtype=object)
    previous = np.ones_like(self.correct)
    for name, correct in self.after.items():
      names[previous & ~correct] = name
      previous = correct
    return names


def _examples(dataset, num_examples):
  """The first `num_examples` (all if None) unbatched (image, label) pairs."""
  dataset = getattr(dataset, 'dataset', dataset)  # a data.DatasetSplit
  if dataset.element_spec[0].shape.rank == 4:
    dataset = dataset.unbatch()
  return dataset if num_examples is None else dataset.take(num_examples)


def load_examples(dataset, num_examples=None, chunk=1000):
  """(images, labels): the first `num_examples` (all if None) examples of `dataset` as
  numpy arrays, read in a single pass. Example i is the one every attack of
  `run_autoattack` calls example i: a dataset that reshuffles on each pass (or reads
  differently) cannot hand a later attack other examples than the clean pass scored."""
  images, labels = [], []
  for image_batch, label_batch in _examples(dataset, num_examples).batch(chunk):
    images.append(image_batch.numpy())
    labels.append(label_batch.numpy())
  if not images:
    raise ValueError('The dataset has no examples.')
  return np.concatenate(images), np.concatenate(labels)


def _numbered_subset(images, labels, keep, batch_size):
  """Full batches of (image, label, id) of the examples where `keep` (all if None), ids
  being positions in `images`; padded with copies of the first, with id -1, as
  `attacks.attack_dataset` does (no replica is ever handed an empty batch)."""
  ids = np.arange(len(labels)) if keep is None else np.flatnonzero(keep)
  padding = -len(ids) % batch_size
  ids = np.concatenate([ids, np.full(padding, ids[0])]).astype(np.int64)
  numbered = np.where(np.arange(len(ids)) < len(ids) - padding, ids, -1)
  return tf.data.Dataset.from_tensor_slices(
      (images[ids], labels[ids], numbered)).batch(batch_size, drop_remainder=True)


def _dataset_pass(replica_fn, batches, num_batches, strategy, eps, progress):
  """Runs replica_fn(images, labels, ids) -> dict on every batch over `strategy`; checks
  any 'adversarial' output; returns the outputs of the real examples in id order."""

  @tf.function
  def run_batch(batch):
    return strategy.run(replica_fn, args=batch)

  bar = keras.utils.Progbar(num_batches, unit_name='batch', verbose=1 if progress else 0,
                            stateful_metrics=['robust'])
  collected = {}
  num_correct = num_seen = done = 0
  for batch in strategy.experimental_distribute_dataset(batches):
    done += 1
    outputs = {key: np.concatenate([np.asarray(t) for t in
                                    strategy.experimental_local_results(value)])
               for key, value in run_batch(batch).items()}
    images = outputs.pop('images', None)
    if 'adversarial' in outputs:  # check before scoring
      attacks.check_adversarial(images, outputs['adversarial'], eps, 'linf')
    for key, value in outputs.items():
      collected.setdefault(key, []).append(value)
    real = outputs['example_ids'] >= 0
    num_correct += int(outputs['correct'][real].sum())
    num_seen += int(real.sum())
    bar.update(done, values=[('robust', 100.0 * num_correct / max(num_seen, 1))])
  if bar.target is None:
    bar.update(done, finalize=True)
  results = {key: np.concatenate(value) for key, value in collected.items()}
  ids = results['example_ids']
  order = np.flatnonzero(ids >= 0)
  order = order[np.argsort(ids[order], kind='stable')]
  return {key: value[order] for key, value in results.items()}


def _report(progress, message):
  """A progress line: printed beside the progress bars, else logged."""
  if progress:
    print(message, flush=True)
  else:
    logging.info(message)


def run_autoattack(model, dataset, eps=attacks.LINF_EPS, version='standard',
                   num_examples=None, seed=0, strategy=None, progress=True, batch_size=100,
                   settings=None, restarts=1, keep_adversarial=False):
  """Runs an AutoAttack ensemble over a dataset, one attack at a time over the points
  still robust (as the authors' code), and AutoAttack's sanity checks.

  The first `num_examples` examples are read once (`load_examples`) before the clean
  pass; every attack then works on those arrays, so each attacks exactly the examples the
  clean pass scored, even if the dataset would reshuffle or change on a second pass.

  Per example, the result equals `attacks.attack_dataset(model, dataset, 'autoattack')`
  (the same seeds and example ids), which runs the ensemble batch by batch.

  Args:
    model: a Keras classifier or a callable images -> logits; under `strategy`, built in
      its scope.
    dataset: (image, label) pairs, batched or not, or a `data.DatasetSplit`; images float
      in [0, 1].
    eps: the L-inf radius on the [0, 1] scale.
    version: 'standard' (AutoAttack) or 'fast' (APGD-CE and APGD-T only).
    num_examples: attack the first this many (None: all).
    seed: fixes every random draw.
    strategy: an optional `tf.distribute.Strategy` that splits each batch over replicas.
    progress: show progress bars.
    batch_size: global batch size.
    settings: a `Settings` (default `STANDARD`).
    restarts: runs per attack (per target for the targeted ones); 1 in AutoAttack.
    keep_adversarial: also return the adversarial examples.

  Returns:
    An `AutoAttackResult`.

  Raises:
    AttackError: an adversarial example outside the threat model, or a white-box attack
      on a model with no input gradient.
  """
  if version not in VERSIONS:
    raise ValueError(f'version must be one of {tuple(VERSIONS)}, got {version!r}')
  attacks._check_settings(eps, None, None, restarts)
  settings = settings or STANDARD
  strategy = strategy or tf.distribute.get_strategy()
  if batch_size < strategy.num_replicas_in_sync:
    raise ValueError(f'batch_size {batch_size} is smaller than the number of replicas '
                     f'({strategy.num_replicas_in_sync}).')
  eps_t, restarts_t, seed_t = (tf.constant(eps, tf.float32), tf.constant(restarts, tf.int32),
                               tf.constant(seed, tf.int64))
  tensors = settings.tensors()
  name = ENSEMBLE_NAMES[version]
  title = 'AutoAttack (standard)' if version == 'standard' else name  # progress lines

  def clean_replica(images, labels, example_ids):
    images, labels = tf.cast(images, tf.float32), tf.cast(labels, tf.int64)
    logits = attacks.logits_of(model, images)
    zero, flat = gradient_flags(model, images, labels, eps_t)
    return dict(labels=labels, example_ids=example_ids, zero=zero, flat=flat,
                correct=~attacks._misclassified(logits, labels))

  start = time.perf_counter()
  # One pass over the dataset: every attack below sees these examples under these ids.
  all_images, all_labels = load_examples(dataset, num_examples)
  clean = _dataset_pass(clean_replica,
                        _numbered_subset(all_images, all_labels, None, batch_size),
                        -(-len(all_labels) // batch_size), strategy, eps, progress)
  seconds = {'clean': time.perf_counter() - start}
  after = {'clean': clean['correct'].copy()}
  adversarial = np.array(all_images, np.float32) if keep_adversarial else None

  # The probability and randomness checks look at the first examples.
  check_images = tf.cast(all_images[:CHECK_EXAMPLES], tf.float32)
  repeated = [attacks.logits_of(model, check_images).numpy()
              for _ in range(RANDOMNESS_CALLS)]
  warnings = [message for message in (
      probability_warning(repeated[0]),
      randomness_warning(repeated, all_labels[:CHECK_EXAMPLES]),
      gradient_warning(clean['zero'][clean['correct']], clean['flat'][clean['correct']]))
              if message]

  num_classes = repeated[0].shape[-1]
  stages = _stages_for(VERSIONS[version], num_classes)
  if len(stages) < len(VERSIONS[version]):
    warnings.append(f'APGD-T was skipped: it needs at least 4 classes, the model has '
                    f'{num_classes}.')
  for message in warnings:  # now, in case an attack fails
    logging.warning('%s: %s', name, message)
  correct = clean['correct'].copy()
  for stage in stages:
    start = time.perf_counter()
    keep = correct.copy()
    _report(progress, f'{title}: {STAGE_NAMES[stage]} on the '
                      f'{int(keep.sum())} of {keep.size} points still robust')
    if keep.any():

      def stage_replica(images, labels, example_ids, stage=stage):
        images, labels = tf.cast(images, tf.float32), tf.cast(labels, tf.int64)
        real = tf.where(example_ids >= 0)[:, 0]  # the padding is not attacked

        def attack_real():
          x, y, ids = _gather(real, images, labels, example_ids)
          return _scatter(images, real, _stage_core(stage, model, x, y, eps_t, restarts_t,
                                                    seed_t, ids, tensors))

        found = tf.cond(tf.size(real) > 0, attack_real, lambda: images)
        return dict(images=images, adversarial=found, example_ids=example_ids,
                    correct=~attacks._misclassified(attacks.logits_of(model, found), labels))

      num_batches = -(-int(keep.sum()) // batch_size)
      outputs = _dataset_pass(stage_replica,
                              _numbered_subset(all_images, all_labels, keep, batch_size),
                              num_batches, strategy, eps, progress)
      ids = outputs['example_ids']
      correct[ids] = outputs['correct']
      if keep_adversarial:
        broken = ids[~outputs['correct']]
        adversarial[broken] = outputs['adversarial'][~outputs['correct']]
    after[stage] = correct.copy()
    seconds[stage] = time.perf_counter() - start
    _report(progress, f'{title}: robust accuracy {100.0 * correct.mean():.2f}% '
                      f'({int(correct.sum())} of {correct.size}) after {STAGE_NAMES[stage]}, '
                      f'{seconds[stage]:.1f} s')

  if 'square' in after:
    white_box = [stage for stage in after if stage in _WHITE_BOX]
    message = square_warning(after[white_box[-1]] if white_box else after['clean'],
                             after['square'])
    if message:
      warnings.append(message)
      logging.warning('%s: %s', name, message)
  return AutoAttackResult(version=version, eps=float(eps), labels=clean['labels'],
                          correct=correct, after=after, seconds=seconds, warnings=warnings,
                          adversarial=adversarial)


def _run_ensemble_on_dataset(spec, model, dataset, eps, restarts, num_examples, seed,
                             strategy, progress, batch_size, keep_adversarial):
  """`attacks.attack_dataset` of an ensemble: `run_autoattack`, whose report (accuracy
  after each attack, times, sanity checks) becomes the result's `report`."""
  result = run_autoattack(model, dataset, eps, _VERSION_OF_METHOD[spec.method],
                          num_examples=num_examples, seed=seed, strategy=strategy,
                          progress=progress, batch_size=batch_size, restarts=restarts,
                          keep_adversarial=keep_adversarial)
  return attacks.AttackResult(name=spec.name, correct=result.correct, labels=result.labels,
                              adversarial=result.adversarial, report=result)


for _method in attacks.AUTOATTACK_METHODS:
  attacks.register_core(_method, adversarial_core,
                        _run_ensemble_on_dataset if _method in _VERSION_OF_METHOD else None)
