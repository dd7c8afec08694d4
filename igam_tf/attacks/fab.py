"""FAB-T (Croce & Hein, ICML 2020): the targeted Fast Adaptive Boundary attack, L-inf,
AutoAttack's third attack. It looks for the smallest perturbation across the linearized
boundary to each target class; a point counts as broken only if FAB's point lies within
eps. `fab_t` runs `compiled_fab_t`, traced once per model and input shape.
"""

import numpy as np
import tensorflow as tf

from igam_tf.attacks import ops

# FAB's random draws for an example, apart from the other attacks' (see example_seeds).
FAB_STREAM = 2 << 20


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


def fab_run(model, images, labels, targets, start, steps, alpha_max, eta, beta):
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
      logits = ops.logits_of(model, current)
      # f_t - f_y: the linearized boundary between the label and the target.
      gap = (tf.gather(logits, targets, batch_dims=1)
             - tf.gather(logits, labels, batch_dims=1))
      total = tf.reduce_sum(gap)
    gradient = tape.gradient(total, current)
    if gradient is None:
      raise ops.AttackError('The model gives no gradient with respect to its input images.')
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
    fooled = ops.misclassified(ops.logits_of(model, current), labels)
    reached = tf.reduce_max(tf.abs(flat_current - flat_images), axis=1)
    closer = fooled & (reached < distance)
    best = ops.where(closer, current, best)
    distance = tf.where(closer, reached, distance)
    # Step back towards the clean image from the points across the boundary.
    current = ops.where(fooled, images + (current - images) * beta, current)
  return best, distance


def fab_t_core(model, images, labels, eps, steps, restarts, seed, example_ids,
               num_targets, alpha_max, eta, beta):
  """FAB-T: for each target (and restart) a FAB run on the points not yet broken within
  eps; the first restart starts at the clean image, the others at a random point at
  L-inf distance eps / 2. Returns a misclassified point within eps where one was found,
  else the images. Unchecked."""
  clean_logits = ops.logits_of(model, images)
  targets = ops.target_classes(clean_logits, labels, num_targets)
  broken = ops.misclassified(clean_logits, labels)
  best = images
  runs = tf.shape(targets, out_type=tf.int32)[1] * restarts
  run = tf.constant(0)
  while run < runs and tf.reduce_any(~broken):
    active = tf.where(~broken)[:, 0]
    x, y, ids = ops.gather(active, images, labels, example_ids)
    target = tf.gather(targets[:, run // restarts], active)

    def random_start(x=x, ids=ids):
      noise = ops.per_example_noise(
          x, ops.example_seeds(seed, FAB_STREAM + run, ids), 'uniform')
      scale = tf.reduce_max(tf.abs(noise), axis=[1, 2, 3], keepdims=True)
      return tf.clip_by_value(x + eps / 2 * noise / (scale + 1e-12), 0.0, 1.0)

    start = tf.cond(run % restarts > 0, random_start, lambda x=x: x)
    adversarial, distance = fab_run(model, x, y, target, start, steps, alpha_max, eta,
                                    beta)
    # Only points within eps count (FAB itself is not bounded by eps).
    success = (distance <= eps) & ops.misclassified(ops.logits_of(model, adversarial), y)
    best = ops.scatter(best, active, ops.where(success, adversarial, tf.gather(best, active)))
    broken = ops.scatter(broken, active, success)
    run += 1
  return best



compiled_fab_t = tf.function(fab_t_core)


def fab_t(model, images, labels, eps, steps=100, num_targets=ops.NUM_TARGETS, restarts=1,
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
  return ops.run_linf_core(compiled_fab_t, model, images, labels, eps, steps, restarts, seed,
                           example_ids, tf.cast(num_targets, tf.int32),
                           tf.cast(alpha_max, tf.float32), tf.cast(eta, tf.float32),
                           tf.cast(beta, tf.float32))
