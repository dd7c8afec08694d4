"""The paper's baselines and the control a reviewer asks for first.

- StandardTraining: cross-entropy on natural images.
- PGDAdversarialTraining: Madry et al.'s PGD-k adversarial training.
- GradientNormPenalty: double backpropagation (Drucker & LeCun 1991; Ross &
  Doshi-Velez 2018): IGAM's L_diff with a zero teacher, so it measures what
  regularizing input gradients gives without any robust teacher.
(Logit-only finetuning is `teacher.Teacher` trained by `finetune_teacher`.)
"""

import keras
import tensorflow as tf

from igam_tf import attacks
from igam_tf import distribution
from igam_tf.architectures import logits_with_batch_statistics
from igam_tf.igam import PIXEL_SCALE
from igam_tf.igam import weight_decay_loss
from igam_tf.input_gradients import DOUBLE_BACKPROP
from igam_tf.input_gradients import finite_difference_weight_gradients
from igam_tf.input_gradients import objective_and_input_gradients
from igam_tf.warm_up import WarmUpStep


class StandardTraining(keras.Model):
  """Trains `classifier` on cross-entropy plus L2 weight decay."""

  def __init__(self, classifier, weight_decay=0.0, **kwargs):
    super().__init__(**kwargs)
    self.classifier, self.weight_decay = classifier, weight_decay
    self.loss_tracker = keras.metrics.Mean(name='loss')
    self.xent_tracker = keras.metrics.Mean(name='xent')
    self.accuracy = keras.metrics.SparseCategoricalAccuracy(name='accuracy')

  def call(self, images, training=False):
    return self.classifier(images, training=training)

  @property
  def metrics(self):
    return [self.loss_tracker, self.xent_tracker, self.accuracy]

  def training_images(self, images, labels):
    """What the classifier trains on: the images as given."""
    return images

  def logits_and_penalty(self, images, labels):
    """(logits, penalty, what penalty_gradients needs of this pass)."""
    return self.classifier(images, training=True), 0.0, None

  def penalty_gradients(self, tape, gradients, images, labels, held):
    """The loss's weight gradients, with any part the tape does not give added."""
    del tape, images, labels, held
    return gradients

  def train_step(self, data):
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    global_batch = tf.cast(tf.shape(images)[0] * replicas, tf.float32)
    images = self.training_images(images, labels)
    with tf.GradientTape(persistent=True) as tape:  # read again by penalty_gradients
      logits, penalty, held = self.logits_and_penalty(images, labels)
      xent = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(
          labels, logits, from_logits=True)) / global_batch
      loss = xent + penalty + self.weight_decay * weight_decay_loss(self.classifier) / replicas
      # Under mixed_float16 (a LossScaleOptimizer) scaled, so that float16 gradients do
      # not underflow; apply_gradients unscales them.
      scaled_loss = self.optimizer.scale_loss(loss)
    variables = self.classifier.trainable_variables
    gradients = self.penalty_gradients(tape, tape.gradient(scaled_loss, variables), images,
                                       labels, held)
    del tape
    self.optimizer.apply_gradients(zip(gradients, variables))
    self.loss_tracker.update_state(loss * replicas)
    self.xent_tracker.update_state(xent * replicas)
    self.accuracy.update_state(labels, logits)
    return {m.name: m.result() for m in self.metrics}

  def test_step(self, data):
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    self.accuracy.update_state(labels, self.classifier(images, training=False))
    return {'accuracy': self.accuracy.result()}


PGD_BN = ('moving', 'batch')


class PGDAdversarialTraining(StandardTraining):
  """Trains on PGD-k adversarial examples (L-inf, random start), made afresh each step.

  `pgd_bn` is how BN runs while the examples are crafted: 'moving' (inference mode,
  ours) or 'batch' (the batch's statistics, as Madry's code crafts them, without
  touching the moving averages).
  """

  def __init__(self, classifier, epsilon, step_size, steps, seed=0, pgd_bn='moving',
               **kwargs):
    super().__init__(classifier, **kwargs)
    if pgd_bn not in PGD_BN:
      raise ValueError(f'--pgd_bn must be one of {", ".join(PGD_BN)}, got {pgd_bn!r}')
    self.epsilon, self.step_size, self.steps, self.seed = epsilon, step_size, steps, seed
    self.pgd_bn = pgd_bn

  def training_images(self, images, labels):
    # A new random start every step, repeatable from the step number (so resumed runs
    # match), one per example from its position in the global batch (so replicas draw
    # the starts one device draws, not each the same ones).
    # With pgd_bn='batch', the statistics are each replica's share's (no replicas'
    # synchronization can sit inside the attack's loop).
    seed = self.seed * 2**24 + tf.cast(self.optimizer.iterations, tf.int64)
    target = self.classifier if self.pgd_bn == 'moving' else (
        lambda x: logits_with_batch_statistics(self.classifier, x))
    with distribution.local_batch_statistics(self.classifier):
      return tf.stop_gradient(attacks.pgd_linf(
          target, images, labels, eps=self.epsilon, step_size=self.step_size,
          steps=self.steps, seed=seed,
          example_ids=distribution.global_example_ids(tf.shape(images)[0])))


class GradientNormPenalty(WarmUpStep, StandardTraining):
  """Adds weight * ||J||^2 summed over the batch, J on the 0..255 scale as in IGAM,
  from `penalty_start_step` on (IGAM's schedule: igam_start_step); before it, a
  cross-entropy step of its own (`WarmUpStep`)."""

  def __init__(self, classifier, penalty_weight, gradient_of='xent', penalty_start_step=0,
               double_backprop='exact', finite_difference_step=1e-3, **kwargs):
    super().__init__(classifier, **kwargs)
    if double_backprop not in DOUBLE_BACKPROP:
      raise ValueError(f'--double_backprop must be one of {", ".join(DOUBLE_BACKPROP)}, got '
                       f'{double_backprop!r}')
    self.penalty_weight, self.gradient_of = penalty_weight, gradient_of
    self.penalty_start_step = penalty_start_step
    self.double_backprop, self.finite_difference_step = double_backprop, finite_difference_step

  @property
  def terms_start_step(self):
    return self.penalty_start_step

  def logits_and_penalty(self, images, labels):
    if not self.terms_on:
      return super().logits_and_penalty(images, labels)
    gradients, logits, objective = objective_and_input_gradients(
        lambda x: self.classifier(x, training=True), images, labels, self.gradient_of)
    held = None
    if self.double_backprop == 'finite_difference':
      # J held fixed here; its weight gradient comes from penalty_gradients.
      gradients = tf.stop_gradient(gradients)
      held = (gradients, objective)
    return (logits, self.penalty_weight * tf.reduce_sum(tf.square(gradients / PIXEL_SCALE)),
            held)

  def penalty_gradients(self, tape, gradients, images, labels, held):
    if held is None:
      return gradients
    fixed_gradients, objective = held
    # d penalty / d J = 2 weight J / 255^2, the direction of the finite difference.
    upstream = 2 * self.penalty_weight * fixed_gradients / PIXEL_SCALE**2
    variables = self.classifier.trainable_variables
    return [g + p for g, p in zip(gradients, finite_difference_weight_gradients(
        lambda x: logits_with_batch_statistics(self.classifier, x), variables, images,
        labels, self.gradient_of, upstream, self.finite_difference_step,
        tape.gradient(objective, variables)))]
