"""Auto-PGD (Croce & Hein, ICML 2020): APGD on cross-entropy or DLR, L-inf or L2 (the
first attack of AutoAttack), and APGD-T on the targeted DLR loss (its second).

One family because APGD-T is APGD's run on another loss, over target classes. The
step-size bookkeeping follows the authors' autopgd_base.py; `apgd` and `apgd_t` run
`compiled_apgd` / `compiled_apgd_t`, traced once per model, norm, loss and input shape.
"""

import numpy as np
import tensorflow as tf

from igam_tf.attacks import names
from igam_tf.attacks import ops

APGD_STEPS = names.APGD_STEPS
# APGD-T's random draws for an example, apart from the other attacks' (see example_seeds).
APGD_T_STREAM = 1 << 20


def checkpoint_schedule(steps):
  """AutoPGD's first checkpoint interval, its decrement and its minimum, in iterations:
  p_1 = 0.22, p_{j+1} - p_j = max(p_j - p_{j-1} - 0.03, 0.06) of the budget (exact in ints)."""
  steps = tf.cast(steps, tf.int32)
  return (tf.maximum(22 * steps // 100, 1), tf.maximum(3 * steps // 100, 1),
          tf.maximum(6 * steps // 100, 1))


def step_size_state(best_loss, steps):
  """AutoPGD's step-size bookkeeping before its first iteration, as the authors' code
  (autopgd_base.py) starts it: (the previous iterate's loss, increases counted since the
  last checkpoint, iterations since it, the current interval, the best loss at the last
  checkpoint, whether the step was halved there).

  The previous loss starts at 0, not at the start point's loss: the authors' first
  oscillation count reads row -1 of `loss_steps`, still zero then, so the first iterate
  counts as an increase exactly when its loss is positive. And no condition 2 at the
  first checkpoint (`reduced_last_check` starts at ones).
  """
  interval, _, _ = checkpoint_schedule(steps)
  return (tf.zeros_like(best_loss), tf.zeros_like(best_loss), tf.constant(0, tf.int32),
          interval, best_loss, tf.ones_like(best_loss, tf.bool))


def step_size_update(state, loss, best_loss, steps, rho):
  """One iteration of AutoPGD's step-size bookkeeping, as in the authors' code.

  Args:
    state: from `step_size_state` or the previous call.
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
  _, decrement, min_interval = checkpoint_schedule(steps)
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


def apgd_run(model, images, labels, eps, steps, seeds, rho, norm, loss):
  """One AutoPGD run (Croce & Hein 2020, Algorithm 1; details as in their code,
  autopgd_base.py's attack_single_run).

  Returns (adversarial, fooled, best loss): the last misclassified iterate where one was
  found, else the iterate of highest loss.
  """
  noise = ops.per_example_noise(images, seeds, 'uniform' if norm == 'linf' else 'normal')
  if norm == 'linf':  # as the authors' code: scaled so the largest coordinate is eps
    scale = tf.reduce_max(tf.abs(noise), axis=list(range(1, noise.shape.rank)), keepdims=True)
  else:
    scale = ops.l2_norm(noise)
  current = tf.clip_by_value(images + eps * noise / (scale + 1e-12), 0.0, 1.0)
  current_loss, gradient, logits = ops.loss_gradient(model, current, labels, loss)
  previous = current
  fooled = ops.misclassified(logits, labels)
  fooled_point = current
  best, best_loss, best_gradient = current, current_loss, gradient
  step = tf.fill(tf.shape(labels), 2.0 * eps)
  state = step_size_state(best_loss, steps)

  for i in tf.range(steps):
    momentum = tf.where(tf.equal(i, 0), 1.0, 0.75)  # no momentum on the first step
    velocity = current - previous
    previous = current
    direction = ops.ascent_direction(gradient, norm)
    z = ops.project(current + ops.per_example(step, current) * direction, images, eps, norm)
    current = ops.project(current + momentum * (z - current) + (1 - momentum) * velocity,
                          images, eps, norm)
    current_loss, gradient, logits = ops.loss_gradient(model, current, labels, loss)

    fooled_now = ops.misclassified(logits, labels)
    fooled_point = ops.where(fooled_now, current, fooled_point)
    fooled |= fooled_now
    improved = current_loss > best_loss
    best = ops.where(improved, current, best)
    best_gradient = ops.where(improved, gradient, best_gradient)
    best_loss = tf.where(improved, current_loss, best_loss)

    halve, state = step_size_update(state, current_loss, best_loss, steps, rho)
    step = tf.where(halve, step / 2, step)
    # Halving restarts from the best point so far (the next step's momentum included).
    current = ops.where(halve, best, current)
    gradient = ops.where(halve, best_gradient, gradient)

  return ops.where(fooled, fooled_point, best), fooled, best_loss


def apgd_core(model, images, labels, eps, steps, restarts, seed, example_ids, rho, *,
              norm, loss):
  """Auto-PGD with restarts; keeps, per example, the first restart that fools the model,
  else the point of highest loss. Unchecked."""
  best = images
  best_fooled = tf.zeros_like(labels, tf.bool)
  best_loss = tf.fill(tf.shape(labels), -np.inf)
  for restart in tf.range(restarts):
    adversarial, fooled, losses = apgd_run(
        model, images, labels, eps, steps, ops.example_seeds(seed, restart, example_ids), rho,
        norm, loss)
    take = ~best_fooled & (fooled | (losses > best_loss))
    best = ops.where(take, adversarial, best)
    best_loss = tf.where(take, losses, best_loss)
    best_fooled |= fooled
  return best


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


def apgd_t_core(model, images, labels, eps, steps, restarts, seed, example_ids,
                num_targets, rho):
  """APGD-T: for each target (and restart), APGD on the targeted DLR loss of the points
  not yet misclassified. Returns a misclassified point where one was found, else the
  point of highest loss. Unchecked."""
  clean_logits = ops.logits_of(model, images)
  targets = ops.target_classes(clean_logits, labels, num_targets)
  fooled = ops.misclassified(clean_logits, labels)
  best = images
  best_loss = tf.fill(tf.shape(labels), -np.inf)
  runs = tf.shape(targets, out_type=tf.int32)[1] * restarts
  run = tf.constant(0)
  # The loop stops once every point is broken: no model call ever gets an empty batch.
  while run < runs and tf.reduce_any(~fooled):
    active = tf.where(~fooled)[:, 0]
    x, y, ids, previous_loss = ops.gather(active, images, labels, example_ids, best_loss)
    target = tf.gather(targets[:, run // restarts], active)
    seeds = ops.example_seeds(seed, APGD_T_STREAM + run, ids)
    adversarial, fooled_now, loss = apgd_run(
        model, x, y, eps, steps, seeds, rho, 'linf',
        lambda logits, y, target=target: targeted_dlr_loss(logits, y, target))
    take = fooled_now | (loss > previous_loss)
    best = ops.scatter(best, active, ops.where(take, adversarial, tf.gather(best, active)))
    best_loss = ops.scatter(best_loss, active, tf.where(take, loss, previous_loss))
    fooled = ops.scatter(fooled, active, fooled_now)
    run += 1
  return best


compiled_apgd = tf.function(apgd_core)
compiled_apgd_t = tf.function(apgd_t_core)


def apgd(model, images, labels, eps, steps=APGD_STEPS, loss='ce', restarts=1, seed=0,
         rho=0.75, norm='linf', example_ids=None):
  """Auto-PGD (Croce & Hein, ICML 2020), the first attack of AutoAttack.

  Initial step 2 * eps, momentum 0.75, per-example step halving at
  the checkpoints p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
  when at most a fraction `rho` of the iterates since the last checkpoint had a higher
  loss than the iterate before them, or when the step was not halved at the last
  checkpoint and the best loss has not improved since; halving restarts from the best
  point. This bookkeeping is the authors' code's (see `step_size_update`): each iterate
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
  ops.check_settings(eps, None, steps, restarts)
  if norm not in ops.NORMS:
    raise ValueError(f'norm must be one of {ops.NORMS}, got {norm!r}')
  images, labels, example_ids = ops.batch_inputs(images, labels, example_ids)
  adversarial = compiled_apgd(
      model, images, labels, tf.cast(eps, tf.float32), tf.cast(steps, tf.int32),
      tf.cast(restarts, tf.int32), tf.cast(seed, tf.int64), example_ids,
      tf.cast(rho, tf.float32), norm=norm, loss=ops.canonical_loss(loss))
  return ops.checked(images, adversarial, eps, norm)


def apgd_t(model, images, labels, eps, steps=100, num_targets=ops.NUM_TARGETS, restarts=1,
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
  return ops.run_linf_core(compiled_apgd_t, model, images, labels, eps, steps, restarts,
                           seed, example_ids, tf.cast(num_targets, tf.int32),
                           tf.cast(rho, tf.float32))
