"""IGAM's training phase (the paper's Algorithm 1, second loop) as a Keras model.

A student learns the target task while a discriminator tries to tell its input
gradients J_s from a frozen, finetuned teacher's J_t, and the student tries to
fool it (L_adv) and to match J_t pixel by pixel (L_diff).
"""

import keras
import tensorflow as tf

from igam_tf.architectures import logits_with_batch_statistics
from igam_tf.input_gradients import DOUBLE_BACKPROP
from igam_tf.input_gradients import finite_difference_weight_gradients
from igam_tf.input_gradients import input_gradients
from igam_tf.input_gradients import normalize_per_example
from igam_tf.input_gradients import objective_and_input_gradients
from igam_tf.warm_up import WarmUpStep

# Gradients are matched on the original 0..255 pixel scale (d/d(255 x) = d/dx / 255)
# so that the authors' loss weights carry over to our [0, 1] images.
PIXEL_SCALE = 255.0


DISC_UPDATES = ('accumulate', 'current_batch')
DIFF_WINDOWS = ('crop', 'full')


def weight_decay_loss(model):
  """Madry's L2 penalty: sum of ||kernel||^2 / 2 over the model's kernels."""
  return tf.add_n([tf.nn.l2_loss(w) for w in model.trainable_weights if w.name == 'kernel'])


def igam_losses(labels, logits, j_s, j_t, disc_labels, disc_logits, global_batch):
  """The arithmetic of Algorithm 1's student and discriminator losses, for one replica's
  share of the batch (replicas' gradients are summed, so means divide by the global
  batch).

  Returns a dict: xent (the student's classification loss), disc_xent (the
  discriminator's cross-entropy on student (0) and teacher (1) gradients), adv
  (L_adv = -disc_xent: the student maximizes it, a true minimax as in the authors'
  code) and diff (L_diff = ||J_s - J_t||^2 summed over the batch, as the authors').
  """
  xent = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(
      labels, logits, from_logits=True)) / global_batch
  disc_xent = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(
      disc_labels, disc_logits, from_logits=True)) / (2.0 * global_batch)
  return {'xent': xent, 'disc_xent': disc_xent, 'adv': -disc_xent,
          'diff': tf.reduce_sum(tf.square(j_s - j_t))}


class IGAM(WarmUpStep, keras.Model):
  """Trains `student` with IGAM against a frozen `teacher`.

  Args:
    student: any Keras classifier of target-task images in [0, 1] to logits.
    teacher: the finetuned teacher, from target-task images (through its input
      transform) to logits, e.g. a `teacher.Teacher`; frozen here. It is called with
      `training=True`, so a random transform (random_pad) draws afresh each step; a
      `Teacher` keeps its BN as its `batch_norm` says.
    discriminator: a Keras model from gradient maps to 2 logits (1 = teacher).
    gradient_window: a `transforms.GradientWindow` when the teacher sees only a
      crop of the image: both gradient maps are cropped to it before the
      discriminator (Sec. 4.3.2) and, with diff_window='crop', before L_diff.
    gradient_of: 'xent' (the paper's text) or 'true_prob' (the authors' code).
    adv_weight, diff_weight: the weights of L_adv and L_diff.
    disc_every: one discriminator step per this many student steps (under any number of
      replicas).
    disc_update: with disc_every > 1, 'accumulate' (the mean of those steps' gradients,
      applied once) or 'current_batch' (the authors': one step on that step's batch).
    diff_window: 'crop' (ours: L_diff sees what the discriminator sees) or 'full'
      (the whole maps: the student's gradient outside the teacher's crop is pushed to
      the teacher's zero).
    igam_start_step: student steps of cross-entropy only before IGAM starts, each a
      traced step of its own (`WarmUpStep`): no teacher or double
      backpropagation runs, and the discriminator and its optimizer neither move nor
      count those steps.
    weight_decay, disc_weight_decay: L2 weight decay of the student's and the
      discriminator's kernels (the authors: 2e-4 for both).
    double_backprop: how the weight gradient of the terms through J_s is taken: 'exact'
      (second-order autodiff) or 'finite_difference' (one more forward and backward
      pass at images + finite_difference_step * the terms' gradient w.r.t. J_s, scaled
      to unit RMS: `input_gradients.finite_difference_weight_gradients`).
  """

  def __init__(self, student, teacher, discriminator, *, gradient_window=None,
               gradient_of='xent', adv_weight=1.0, diff_weight=10.0, disc_every=1,
               disc_update='accumulate', diff_window='crop', igam_start_step=0,
               weight_decay=0.0, disc_weight_decay=0.0, double_backprop='exact',
               finite_difference_step=1e-3, **kwargs):
    super().__init__(**kwargs)
    if double_backprop not in DOUBLE_BACKPROP:
      raise ValueError(f'--double_backprop must be one of {", ".join(DOUBLE_BACKPROP)}, got '
                       f'{double_backprop!r}')
    if disc_update not in DISC_UPDATES:
      raise ValueError(f'--disc_update must be one of {", ".join(DISC_UPDATES)}, got {disc_update!r}')
    if diff_window not in DIFF_WINDOWS:
      raise ValueError(f'--diff_window must be one of {", ".join(DIFF_WINDOWS)}, got {diff_window!r}')
    self.student, self.teacher, self.discriminator = student, teacher, discriminator
    self.teacher.trainable = False
    self.gradient_window = gradient_window
    self.gradient_of = gradient_of
    self.adv_weight, self.diff_weight = adv_weight, diff_weight
    self.disc_every, self.disc_update = disc_every, disc_update
    self.diff_window, self.igam_start_step = diff_window, igam_start_step
    self.weight_decay, self.disc_weight_decay = weight_decay, disc_weight_decay
    self.double_backprop, self.finite_difference_step = double_backprop, finite_difference_step
    self.trackers = {name: keras.metrics.Mean(name=name) for name in (
        'loss', 'xent', 'adv_loss', 'diff_loss', 'disc_accuracy')}
    self.accuracy = keras.metrics.SparseCategoricalAccuracy(name='accuracy')

  def compile(self, student_optimizer, discriminator_optimizer, **kwargs):
    super().compile(optimizer=student_optimizer, **kwargs)
    self.discriminator_optimizer = discriminator_optimizer

  def build(self, input_shape):
    # Subclassed models build by running once.
    images = tf.zeros((1,) + tuple(input_shape[1:]))
    self.student(images)
    self.discriminator(self.crop(images))
    self.optimizer.build(self.student.trainable_variables)
    self.discriminator_optimizer.build(self.discriminator.trainable_variables)
    if self.disc_every > 1 and self.disc_update == 'accumulate':
      # The sum of the discriminator's gradients since its last step, each replica its
      # own share (on read, and in checkpoints, the replicas' sum).
      self.disc_accumulators = [
          keras.Variable(keras.initializers.Zeros(), shape=v.shape, dtype=v.dtype,
                         trainable=False, aggregation='sum', synchronization='on_read',
                         name=f'disc_accumulated_{i}')
          for i, v in enumerate(self.discriminator.trainable_variables)]
    super().build(input_shape)

  @property
  def terms_start_step(self):  # before it, a step of its own (WarmUpStep)
    return self.igam_start_step

  def call(self, images, training=False):
    return self.student(images, training=training)

  @property
  def metrics(self):
    return list(self.trackers.values()) + [self.accuracy]

  def crop(self, gradients):
    return self.gradient_window.crop(gradients) if self.gradient_window else gradients

  def teacher_gradients(self, images, labels):
    """J_t: the frozen teacher's input gradient (through its input transform)."""
    gradients, _ = input_gradients(lambda x: self.teacher(x, training=True),
                                   images, labels, self.gradient_of)
    return gradients / PIXEL_SCALE

  def train_step(self, data):
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    global_batch = tf.cast(tf.shape(images)[0] * replicas, tf.float32)
    if not self.terms_on:
      return self.warm_up_step(images, labels, replicas, global_batch)
    step = tf.identity(self.optimizer.iterations)  # this step's number, read before the update

    # Teacher: its input gradients J_t (frozen, no tape on its weights).
    j_t = self.teacher_gradients(images, labels)

    with tf.GradientTape(persistent=True) as tape:
      # Student: its input gradients J_s, differentiable w.r.t. its weights (exact: the
      # inner tape in objective_and_input_gradients, double backpropagation), or held
      # fixed (finite_difference: their weight gradients come from one more pass).
      j_s, logits, objective = objective_and_input_gradients(
          lambda x: self.student(x, training=True), images, labels, self.gradient_of)
      if self.double_backprop == 'finite_difference':
        j_s = tf.stop_gradient(j_s)
        tape.watch(j_s)
      raw_j_s, j_s = j_s, j_s / PIXEL_SCALE
      # Discriminator: tells J_s (label 0) from J_t (label 1), each map normalized.
      disc_logits = self.discriminator(
          normalize_per_example(tf.concat([self.crop(j_s), self.crop(j_t)], 0)), training=True)
      disc_labels = tf.concat([tf.zeros_like(labels), tf.ones_like(labels)], 0)
      if self.diff_window == 'crop':
        j_s, j_t = self.crop(j_s), self.crop(j_t)
      losses = igam_losses(labels, logits, j_s, j_t, disc_labels, disc_logits, global_batch)
      # The student's loss: xent + wd * L2 + adv * L_adv + diff * L_diff (IGAM terms from
      # igam_start_step on); the discriminator's: its cross-entropy + its L2.
      terms = self.adv_weight * losses['adv'] + self.diff_weight * losses['diff']
      loss = (losses['xent'] + self.weight_decay * weight_decay_loss(self.student) / replicas
              + terms)
      disc_loss = (losses['disc_xent']
                   + self.disc_weight_decay * weight_decay_loss(self.discriminator) / replicas)

    # Update the student.
    student_vars = self.student.trainable_variables
    gradients = tape.gradient(loss, student_vars)
    if self.double_backprop == 'finite_difference':  # the terms' gradient through J_s
      gradients = [g + t for g, t in zip(gradients, finite_difference_weight_gradients(
          lambda x: logits_with_batch_statistics(self.student, x), student_vars, images,
          labels, self.gradient_of, tape.gradient(terms, raw_j_s), self.finite_difference_step,
          tape.gradient(objective, student_vars)))]
    self.optimizer.apply_gradients(zip(gradients, student_vars))
    # Update the discriminator: every step, or every disc_every-th.
    disc_vars = self.discriminator.trainable_variables
    disc_gradients = tape.gradient(disc_loss, disc_vars)
    del tape
    if self.disc_every > 1:
      self._apply_discriminator_every(disc_gradients, disc_vars, step)
    else:
      self._apply_discriminator(disc_gradients, disc_vars)

    local_batch = tf.cast(tf.shape(images)[0], tf.float32)
    disc_correct = tf.cast(tf.argmax(disc_logits, -1) == tf.cast(disc_labels, tf.int64), tf.float32)
    for name, value in (('loss', loss * replicas), ('xent', losses['xent'] * replicas),
                        ('adv_loss', losses['adv'] * replicas),
                        ('diff_loss', losses['diff'] / local_batch),
                        ('disc_accuracy', tf.reduce_mean(disc_correct))):
      self.trackers[name].update_state(value)
    self.accuracy.update_state(labels, logits)
    return {m.name: m.result() for m in self.metrics}

  def warm_up_step(self, images, labels, replicas, global_batch):
    """A step before igam_start_step: the student's cross-entropy and weight decay."""
    with tf.GradientTape() as tape:
      logits = self.student(images, training=True)
      xent = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(
          labels, logits, from_logits=True)) / global_batch
      loss = xent + self.weight_decay * weight_decay_loss(self.student) / replicas
    student_vars = self.student.trainable_variables
    self.optimizer.apply_gradients(zip(tape.gradient(loss, student_vars), student_vars))
    self.trackers['loss'].update_state(loss * replicas)
    self.trackers['xent'].update_state(xent * replicas)
    self.accuracy.update_state(labels, logits)
    return {m.name: m.result() for m in self.metrics}

  def _apply_discriminator(self, gradients, variables):
    self.discriminator_optimizer.apply_gradients(zip(gradients, variables))

  def _apply_discriminator_every(self, gradients, variables, step):
    """One discriminator step per disc_every student steps, the same under any number
    of replicas.

    'accumulate': on every disc_every-th call of its optimizer (which counts every
    call, as Keras's gradient accumulation), the mean of the gradients since its last
    step; 'current_batch': on every disc_every-th step from igam_start_step, that
    step's gradients. No synchronization of replicas may sit inside a tf.cond, so the
    update (its all-reduce of gradients included) runs every step, and on the steps
    that take none, the discriminator's weights and its optimizer's state are put back.
    """
    optimizer = self.discriminator_optimizer
    kept = list(variables) + [v for v in optimizer.variables if v is not optimizer.iterations]
    if self.disc_update == 'accumulate':
      take_step = (optimizer.iterations + 1) % self.disc_every == 0
      applied = [(g + a) / self.disc_every for g, a in zip(gradients, self.disc_accumulators)]
      for accumulator, gradient in zip(self.disc_accumulators, gradients):
        accumulator.assign(tf.where(take_step, tf.zeros_like(gradient), accumulator + gradient))
    else:
      take_step = (step - self.igam_start_step) % self.disc_every == 0
      applied = gradients
      kept.append(optimizer.iterations)  # counts the discriminator's steps only
    before = [tf.identity(v) for v in kept]
    self._apply_discriminator(applied, variables)

    def put_back(strategy, before, take_step):
      for variable, old in zip(kept, before):
        variable = variable.value if isinstance(variable, keras.Variable) else variable
        strategy.extended.update(
            variable, lambda v, old, take: v.assign(tf.where(take, v, old)),
            args=(old, take_step), group=False)
    tf.distribute.get_replica_context().merge_call(put_back, args=(before, take_step))

  def test_step(self, data):
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    self.accuracy.update_state(labels, self.student(images, training=False))
    return {'accuracy': self.accuracy.result()}
