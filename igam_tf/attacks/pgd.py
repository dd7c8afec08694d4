"""FGSM and PGD (Madry et al.), L-inf and L2: the attacks of the paper's tables.

`fgsm`, `pgd_linf` and `pgd_l2` run `compiled_fgsm` / `compiled_pgd`, traced once per
model, norm, loss and input shape (eps, step size, steps, restarts and seed are tensors);
the dataset runner traces `fgsm_core` / `pgd_core` into its own per-replica function.
"""

import numpy as np
import tensorflow as tf

from igam_tf.attacks import ops


def uniform_in_ball(images, eps, norm, seeds):
  """Per-example random points uniform in the eps ball (deltas, before the box)."""
  if norm == 'linf':
    return eps * ops.per_example_noise(images, seeds, 'uniform')
  # A uniform direction, and a radius distributed as eps * U^(1/d).
  direction = ops.per_example_noise(images, seeds, 'normal')
  direction /= ops.l2_norm(direction) + 1e-12
  dims = tf.cast(tf.reduce_prod(tf.shape(images)[1:]), tf.float32)
  radii = tf.map_fn(
      lambda seed: tf.random.stateless_uniform(
          [], tf.random.experimental.stateless_fold_in(seed, 1)),
      seeds, fn_output_signature=tf.float32)
  return direction * ops.per_example(eps * radii**(1.0 / dims), images)


def fgsm_core(model, images, labels, eps):
  """FGSM's unchecked examples."""
  _, gradient, _ = ops.loss_gradient(model, images, labels, 'ce')
  return ops.project(images + eps * tf.sign(gradient), images, eps, 'linf')


def pgd_core(model, images, labels, eps, step_size, steps, restarts, seed, example_ids, *,
             norm, loss, random_start):
  """PGD with restarts; keeps, per example, the first restart that fools the model, else
  the final iterate with the highest loss. Unchecked."""
  best = images
  best_fooled = tf.zeros_like(labels, tf.bool)
  best_loss = tf.fill(tf.shape(labels), -np.inf)
  for restart in tf.range(restarts):
    adversarial = images
    if random_start:
      start = uniform_in_ball(images, eps, norm, ops.example_seeds(seed, restart, example_ids))
      adversarial = ops.project(images + start, images, eps, norm)
    for _ in tf.range(steps):
      _, gradient, _ = ops.loss_gradient(model, adversarial, labels, loss)
      adversarial = ops.project(
          adversarial + step_size * ops.ascent_direction(gradient, norm), images, eps, norm)
    logits = ops.logits_of(model, adversarial)
    losses = ops.per_example_loss(logits, labels, loss)
    fooled = ops.misclassified(logits, labels)
    take = ~best_fooled & (fooled | (losses > best_loss))
    best = ops.where(take, adversarial, best)
    best_loss = tf.where(take, losses, best_loss)
    best_fooled |= fooled
  return best


compiled_fgsm = tf.function(fgsm_core)
compiled_pgd = tf.function(pgd_core)


def fgsm(model, images, labels, eps):
  """FGSM as Madry et al. and IGAM define it: one signed step of size eps, no random start."""
  ops.check_settings(eps)
  images, labels, _ = ops.batch_inputs(images, labels, None)
  adversarial = compiled_fgsm(model, images, labels, tf.cast(eps, tf.float32))
  return ops.checked(images, adversarial, eps, 'linf')


def _pgd(norm, model, images, labels, eps, step_size, steps, restarts, random_start, loss,
         seed, example_ids):
  ops.check_settings(eps, step_size, steps, restarts)
  images, labels, example_ids = ops.batch_inputs(images, labels, example_ids)
  adversarial = compiled_pgd(
      model, images, labels, tf.cast(eps, tf.float32), tf.cast(step_size, tf.float32),
      tf.cast(steps, tf.int32), tf.cast(restarts, tf.int32), tf.cast(seed, tf.int64),
      example_ids, norm=norm, loss=ops.canonical_loss(loss),
      random_start=bool(random_start))
  return ops.checked(images, adversarial, eps, norm)


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
