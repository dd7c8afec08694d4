"""IGAM's train_step: what it updates, what it leaves alone, and that it matches."""

import os
import subprocess
import sys
import textwrap
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

from igam_tf.architectures import build_classifier
from igam_tf.discriminator import build_discriminator
from igam_tf.igam import IGAM
from igam_tf.igam import igam_losses
from igam_tf.igam import weight_decay_loss
from igam_tf.input_gradients import input_gradients
from igam_tf.teacher import Teacher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_igam(transform='channel_average', student_lr=0.05, disc_lr=1e-3, seed=0,
              student='madry_resnet', **kwargs):
  keras.utils.set_random_seed(seed)
  teacher = Teacher(build_classifier('simple_cnn', 5, (12, 12, 1), filters=(8, 16)), 3,
                    transform)
  teacher(tf.zeros((1, 12, 12, 3)))
  if student == 'madry_resnet':
    student = build_classifier('madry_resnet', 3, (12, 12, 3), activation='gelu',
                               filters=(4, 4, 8, 8), units_per_stage=1)
  else:
    student = build_classifier(student, 3, (12, 12, 3), activation='gelu', filters=(8, 16))
  model = IGAM(student, teacher, build_discriminator(2, 4),
               gradient_window=teacher.transform.gradient_window((12, 12, 3)), **kwargs)
  model.compile(keras.optimizers.SGD(student_lr), keras.optimizers.SGD(disc_lr))
  model.build((None, 12, 12, 3))
  return model


def fixed_batch(size=16, seed=0):
  rng = np.random.RandomState(seed)
  return (tf.constant(rng.rand(size, 12, 12, 3).astype(np.float32)),
          tf.constant(rng.randint(0, 3, size)))


def discriminator_kernel_per_step(model, images, labels, steps):
  """The discriminator's first kernel before training and after each of `steps` steps."""
  kernel = model.discriminator.trainable_weights[0]
  snapshots = [kernel.numpy().copy()]
  for _ in range(steps):
    model.train_on_batch(images, labels)
    snapshots.append(kernel.numpy().copy())
  return snapshots


def values(variables):
  return [v.numpy().copy() for v in variables]


class IGAMTest(tf.test.TestCase):

  def gradient_distance(self, model, images, labels):
    j_s, _ = input_gradients(lambda x: model.student(x, training=False), images, labels)
    return float(tf.reduce_sum(tf.square(j_s / 255.0 - model.teacher_gradients(images, labels))))

  def test_igam_steps_reduce_the_gradient_distance(self):
    images, labels = fixed_batch()
    distances = {}
    for diff_weight in (0.0, 1e5):
      model = make_igam(adv_weight=0.5, diff_weight=diff_weight)
      before = self.gradient_distance(model, images, labels)
      model.fit(images, labels, batch_size=16, epochs=15, verbose=0)
      distances[diff_weight] = self.gradient_distance(model, images, labels)
    self.assertLess(distances[1e5], 0.6 * before)
    self.assertLess(distances[1e5], 0.6 * distances[0.0])

  def test_teacher_is_bit_identical_after_training(self):
    model = make_igam(transform='transpose_conv,avg_pool,channel_average')
    frozen = model.teacher.weights
    self.assertLen(model.teacher.transform.weights, 2)  # the transposed convolution
    before = values(frozen)
    images, labels = fixed_batch()
    model.fit(images, labels, batch_size=8, epochs=2, verbose=0)
    for b, a in zip(before, values(frozen)):
      self.assertAllEqual(b, a)

  def test_student_loss_never_updates_discriminator_and_back(self):
    images, labels = fixed_batch()
    # Only the discriminator learns: the student's trainable weights stay put.
    model = make_igam(student_lr=0.0, disc_lr=0.1, diff_weight=1e5)
    student_before = values(model.student.trainable_weights)
    disc_before = values(model.discriminator.trainable_weights)
    model.fit(images, labels, batch_size=16, epochs=1, verbose=0)
    for b, a in zip(student_before, values(model.student.trainable_weights)):
      self.assertAllEqual(b, a)
    self.assertNotAllClose(disc_before[0], model.discriminator.trainable_weights[0].numpy())
    # Only the student learns: the discriminator's trainable weights stay put.
    model = make_igam(student_lr=0.1, disc_lr=0.0, diff_weight=1e5)
    student_before = values(model.student.trainable_weights)
    disc_before = values(model.discriminator.trainable_weights)
    model.fit(images, labels, batch_size=16, epochs=1, verbose=0)
    for b, a in zip(disc_before, values(model.discriminator.trainable_weights)):
      self.assertAllEqual(b, a)
    self.assertNotAllClose(student_before[0], model.student.trainable_weights[0].numpy())

  def test_warm_up_is_cross_entropy_only(self):
    images, labels = fixed_batch()
    model = make_igam(igam_start_step=3, diff_weight=1e5)
    disc_before = values(model.discriminator.trainable_weights)
    history = model.fit(images, labels, batch_size=8, epochs=1, verbose=0)  # steps 0, 1
    for b, a in zip(disc_before, values(model.discriminator.trainable_weights)):
      self.assertAllEqual(b, a)
    self.assertAllClose(history.history['loss'], history.history['xent'])
    history = model.fit(images, labels, batch_size=8, epochs=2, verbose=0)  # steps 2..5
    self.assertNotAllClose(disc_before[0], model.discriminator.trainable_weights[0].numpy())
    self.assertNotAllClose(history.history['loss'][-1], history.history['xent'][-1])

  def test_warm_up_steps_never_run_the_teacher_and_train_as_cross_entropy(self):
    images, labels = fixed_batch()
    model = make_igam(igam_start_step=2, diff_weight=1e5, weight_decay=1e-3)
    plain = make_igam()  # the same initial student
    plain_optimizer = keras.optimizers.SGD(0.05)
    # The warm-up step's graph holds no teacher (nor its double backpropagation).
    with mock.patch.object(IGAM, 'teacher_gradients', side_effect=AssertionError('teacher')):
      model.fit(images, labels, batch_size=8, epochs=1, verbose=0, shuffle=False)  # 2 steps
    for batch in (slice(0, 8), slice(8, 16)):  # what those two steps are
      with tf.GradientTape() as tape:
        logits = plain.student(images[batch], training=True)
        loss = (tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            labels[batch], logits, from_logits=True))
                + 1e-3 * weight_decay_loss(plain.student))
      variables = plain.student.trainable_variables
      plain_optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    self.assertAllClose(values(model.student.weights), values(plain.student.weights),
                        atol=1e-6)
    with mock.patch.object(IGAM, 'teacher_gradients', side_effect=AssertionError('teacher')), \
        self.assertRaisesRegex(AssertionError, 'teacher'):
      model.fit(images, labels, batch_size=8, epochs=1, verbose=0)  # step 2: IGAM's

  def test_discriminator_steps_once_per_disc_every_student_steps(self):
    images, labels = fixed_batch()
    model = make_igam(disc_every=3, diff_weight=1e5)
    snapshots = discriminator_kernel_per_step(model, images, labels, steps=6)
    changed = [not np.array_equal(a, b) for a, b in zip(snapshots, snapshots[1:])]
    self.assertEqual(changed, [False, False, True, False, False, True])

  def test_true_prob_gradients_and_crop_window_train(self):
    model = make_igam(transform='channel_average,center_crop:10', gradient_of='true_prob',
                      diff_weight=1e5)
    images, labels = fixed_batch()
    history = model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    for name in ('loss', 'xent', 'adv_loss', 'diff_loss', 'disc_accuracy', 'accuracy'):
      self.assertTrue(np.isfinite(history.history[name][-1]), name)

  def test_random_pad_draws_a_pad_per_example_and_per_step(self):
    model = make_igam(transform='channel_average,random_pad:20')
    image, label = fixed_batch(size=1)
    images, labels = tf.repeat(image, 8, axis=0), tf.repeat(label, 8, axis=0)
    first = model.teacher_gradients(images, labels).numpy()
    # The same image, eight places: the copies' teacher gradients differ.
    self.assertGreater(len({first[i].tobytes() for i in range(8)}), 1)
    # Training steps draw afresh, and count their draws in a checkpointed weight.
    draws = [w for w in model.weights if w.path.endswith('draws')]
    self.assertLen(draws, 1)
    model.train_on_batch(images, labels)
    model.train_on_batch(images, labels)
    self.assertEqual(int(draws[0].numpy()), 3)
    self.assertNotAllClose(first, model.teacher_gradients(images, labels))
    # Outside training the teacher pads in the centre, every time.
    self.assertAllEqual(model.teacher(images), model.teacher(images))

  def test_teacher_bn_batch_uses_the_batch_statistics_and_stays_frozen(self):
    keras.utils.set_random_seed(0)
    source = build_classifier('madry_resnet', 5, (12, 12, 3), filters=(4, 4, 8, 8),
                              units_per_stage=1)
    images, _ = fixed_batch()
    for mode in ('moving', 'batch'):
      teacher = Teacher(source, 3, batch_norm=mode)
      teacher(images[:1])
      before = values(teacher.variables)
      training, inference = teacher(images, training=True), teacher(images, training=False)
      for b, a in zip(before, values(teacher.variables)):
        self.assertAllEqual(b, a)  # frozen either way: no moving average moves
      if mode == 'moving':
        self.assertAllClose(training, inference)
      else:  # training: the batch's statistics; inference: the moving averages
        self.assertAllClose(training, teacher.head(source.features(images, batch_statistics=True)))
        self.assertNotAllClose(training, inference)
    with self.assertRaisesRegex(ValueError, '--teacher_bn must be one of'):
      Teacher(source, 3, batch_norm='train')

  def test_discriminator_weight_decay_is_applied(self):
    images, labels = fixed_batch()
    updated = {}
    for decay in (0.0, 0.5):
      model = make_igam(disc_lr=0.1, diff_weight=1e5, disc_weight_decay=decay)
      kernel = model.discriminator.get_layer('conv_0').kernel
      before = kernel.numpy().copy()
      model.train_on_batch(images, labels)
      updated[decay] = kernel.numpy()
    # SGD: the decay adds lr * decay * w (the gradient of decay * ||w||^2 / 2) to the step.
    self.assertAllClose(updated[0.0] - updated[0.5], 0.1 * 0.5 * before, atol=1e-6)

  def test_current_batch_discriminator_steps_on_its_own_batch(self):
    images, labels = fixed_batch()
    model = make_igam(disc_every=3, disc_update='current_batch', diff_weight=1e5)
    snapshots = discriminator_kernel_per_step(model, images, labels, steps=6)
    changed = [not np.array_equal(a, b) for a, b in zip(snapshots, snapshots[1:])]
    self.assertEqual(changed, [True, False, False, True, False, False])
    # Its first step is the step an every-step discriminator takes on that batch.
    every_step = make_igam(diff_weight=1e5)
    every_step.train_on_batch(images, labels)
    self.assertAllClose(snapshots[1], every_step.discriminator.trainable_weights[0])

  def test_diff_window_full_also_matches_outside_the_crop(self):
    images, labels = fixed_batch()
    diff = {}
    for window in ('crop', 'full'):
      model = make_igam(transform='channel_average,center_crop:8', diff_weight=1.0,
                        diff_window=window)
      diff[window] = model.train_on_batch(images, labels, return_dict=True)['diff_loss']
    # Outside the crop the teacher's gradient is zero and the student's is not.
    self.assertGreater(diff['full'], diff['crop'] * 1.05)

  def test_loss_arithmetic(self):
    labels = tf.constant([0, 1])
    logits = tf.constant([[2.0, 0.0], [0.0, 0.0]])
    j_s, j_t = tf.constant([[1.0, 2.0], [0.0, 0.0]]), tf.constant([[0.0, 2.0], [3.0, 0.0]])
    disc_labels = tf.constant([0, 0, 1, 1])
    disc_logits = tf.constant([[0.0, 0.0]] * 4)
    losses = igam_losses(labels, logits, j_s, j_t, disc_labels, disc_logits, global_batch=4.0)
    xent = (np.log(1 + np.exp(-2.0)) + np.log(2.0)) / 4.0  # summed, over the global batch
    self.assertAllClose(losses['xent'], xent)
    self.assertAllClose(losses['disc_xent'], 4 * np.log(2.0) / 8.0)
    self.assertAllClose(losses['adv'], -losses['disc_xent'])
    self.assertAllClose(losses['diff'], 1.0 + 9.0)  # summed over batch and pixels


_EQUIVALENCE_SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[1])
    from tests.test_igam import fixed_batch, make_igam

    def train(devices):
      with tf.distribute.MirroredStrategy(devices).scope():
        # A student without BN: per-replica batch statistics differ from the
        # global batch's by design (the discriminator's BN is synchronized).
        model = make_igam(adv_weight=1.0, diff_weight=1e5, weight_decay=1e-3,
                          student='simple_cnn')
      images, labels = fixed_batch()
      dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
      model.fit(dataset, epochs=2, verbose=0)
      return {v.path.split('/', 1)[1]: v.numpy()
              for v in model.student.weights + model.discriminator.weights}

    one, two = train(['/cpu:0']), train(['/cpu:0', '/cpu:1'])
    # (Conv biases before BN get zero gradients: compare them with atol.)
    print('differing:', [name for name in one
                         if not np.allclose(one[name], two[name], rtol=1e-4, atol=1e-6)])
''')


class DistributedTest(tf.test.TestCase):

  def test_two_replicas_update_like_one_device(self):
    result = subprocess.run([sys.executable, '-c', _EQUIVALENCE_SCRIPT, REPO],
                            capture_output=True, text=True, timeout=300)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('differing: []', result.stdout)


if __name__ == '__main__':
  tf.test.main()
