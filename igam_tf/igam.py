"""IGAM's training phase (the paper's Algorithm 1, second loop) as a Keras model.

A student learns the target task while a discriminator tries to tell its input
gradients J_s from a frozen, finetuned teacher's J_t, and the student tries to
fool it (L_adv) and to match J_t pixel by pixel (L_diff).
"""

import keras
import tensorflow as tf

from igam_tf.input_gradients import input_gradients
from igam_tf.input_gradients import normalize_per_example

# Gradients are matched on the original 0..255 pixel scale (d/d(255 x) = d/dx / 255)
# so that the authors' loss weights carry over to our [0, 1] images.
PIXEL_SCALE = 255.0


def weight_decay_loss(model):
  """Madry's L2 penalty: sum of ||kernel||^2 / 2 over the model's kernels."""
  return tf.add_n([tf.nn.l2_loss(w) for w in model.trainable_weights if w.name == 'kernel'])


class IGAM(keras.Model):
  """Trains `student` with IGAM against a frozen `teacher`.

  Args:
    student: any Keras classifier of target-task images in [0, 1] to logits.
    teacher: the finetuned teacher, from target-task images (through its input
      transform) to logits, e.g. a `teacher.Teacher`; frozen here.
    discriminator: a Keras model from gradient maps to 2 logits (1 = teacher).
    gradient_window: a `transforms.GradientWindow` when the teacher sees only a
      crop of the image: both gradient maps are cropped to it.
    gradient_of: 'xent' (the paper's text) or 'true_prob' (the authors' code).
    adv_weight, diff_weight: the weights of L_adv and L_diff.
    disc_every: one discriminator step per this many student steps.
    igam_start_step: student steps of cross-entropy only before IGAM starts.
    weight_decay: the L2 weight decay of the student's kernels.
  """

  def __init__(self, student, teacher, discriminator, *, gradient_window=None,
               gradient_of='xent', adv_weight=1.0, diff_weight=10.0, disc_every=1,
               igam_start_step=0, weight_decay=0.0, **kwargs):
    super().__init__(**kwargs)
    self.student, self.teacher, self.discriminator = student, teacher, discriminator
    self.teacher.trainable = False  # also puts its BN in inference mode
    self.gradient_window = gradient_window
    self.gradient_of = gradient_of
    self.adv_weight, self.diff_weight = adv_weight, diff_weight
    self.disc_every, self.igam_start_step = disc_every, igam_start_step
    self.weight_decay = weight_decay
    self.trackers = {name: keras.metrics.Mean(name=name) for name in (
        'loss', 'xent', 'adv_loss', 'diff_loss', 'disc_accuracy')}
    self.accuracy = keras.metrics.SparseCategoricalAccuracy(name='accuracy')

  def compile(self, student_optimizer, discriminator_optimizer, **kwargs):
    """`discriminator_optimizer` gets gradient_accumulation_steps=disc_every: it
    applies the mean of that many steps' gradients once (the authors use the last
    batch's only)."""
    super().compile(optimizer=student_optimizer, **kwargs)
    if self.disc_every > 1:
      if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        # Keras's accumulation puts apply_gradients in a tf.cond, which cannot cross
        # the replicas' synchronization point.
        raise ValueError(f'disc_every={self.disc_every} needs a single replica; with '
                         f'several, use disc_every=1 (and a smaller discriminator '
                         f'learning rate for a slower discriminator).')
      discriminator_optimizer.gradient_accumulation_steps = self.disc_every
    self.discriminator_optimizer = discriminator_optimizer

  def build(self, input_shape):
    # Subclassed models build by running once.
    images = tf.zeros((1,) + tuple(input_shape[1:]))
    self.student(images)
    self.discriminator(self.crop(images))
    self.optimizer.build(self.student.trainable_variables)
    self.discriminator_optimizer.build(self.discriminator.trainable_variables)
    super().build(input_shape)

  def call(self, images, training=False):
    return self.student(images, training=training)

  @property
  def metrics(self):
    return list(self.trackers.values()) + [self.accuracy]

  def crop(self, gradients):
    return self.gradient_window.crop(gradients) if self.gradient_window else gradients

  def teacher_gradients(self, images, labels):
    """J_t: the frozen teacher's input gradient (through its input transform)."""
    gradients, _ = input_gradients(lambda x: self.teacher(x, training=False),
                                   images, labels, self.gradient_of)
    return gradients / PIXEL_SCALE

  def train_step(self, data):
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    global_batch = tf.cast(tf.shape(images)[0] * replicas, tf.float32)
    igam_on = self.optimizer.iterations >= self.igam_start_step

    j_t = self.crop(self.teacher_gradients(images, labels))
    with tf.GradientTape(persistent=True) as tape:
      # The inner tape in input_gradients keeps J_s differentiable w.r.t. the
      # student's weights: double backpropagation.
      j_s, logits = input_gradients(lambda x: self.student(x, training=True),
                                    images, labels, self.gradient_of)
      j_s = self.crop(j_s / PIXEL_SCALE)
      disc_logits = self.discriminator(normalize_per_example(tf.concat([j_s, j_t], 0)),
                                       training=True)
      disc_labels = tf.concat([tf.zeros_like(labels), tf.ones_like(labels)], 0)
      # Losses are scaled by the global batch: replicas' gradients are summed.
      disc_xent = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(
          disc_labels, disc_logits, from_logits=True)) / (2.0 * global_batch)
      xent = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(
          labels, logits, from_logits=True)) / global_batch
      l_diff = tf.reduce_sum(tf.square(j_s - j_t))  # summed over the batch, as the authors
      l_adv = -disc_xent  # the student maximizes the discriminator's cross-entropy
      igam_loss = self.adv_weight * l_adv + self.diff_weight * l_diff
      loss = (xent + self.weight_decay * weight_decay_loss(self.student) / replicas
              + tf.where(igam_on, igam_loss, 0.0))

    student_vars = self.student.trainable_variables
    self.optimizer.apply_gradients(zip(tape.gradient(loss, student_vars), student_vars))
    disc_vars = self.discriminator.trainable_variables
    # Zero until IGAM starts (no update: the optimizer's moments are still zero).
    disc_gradients = [g * tf.cast(igam_on, g.dtype) for g in tape.gradient(disc_xent, disc_vars)]
    del tape
    self.discriminator_optimizer.apply_gradients(zip(disc_gradients, disc_vars))

    local_batch = tf.cast(tf.shape(images)[0], tf.float32)
    disc_correct = tf.cast(tf.argmax(disc_logits, -1) == tf.cast(disc_labels, tf.int64), tf.float32)
    for name, value in (('loss', loss * replicas), ('xent', xent * replicas),
                        ('adv_loss', l_adv * replicas), ('diff_loss', l_diff / local_batch),
                        ('disc_accuracy', tf.reduce_mean(disc_correct))):
      self.trackers[name].update_state(value)
    self.accuracy.update_state(labels, logits)
    return {m.name: m.result() for m in self.metrics}

  def test_step(self, data):
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    self.accuracy.update_state(labels, self.student(images, training=False))
    return {'accuracy': self.accuracy.result()}
