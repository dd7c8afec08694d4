"""Input transforms: shapes, and gradients that are the transform's transpose."""

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import madry_models
from igam_tf import teacher
from igam_tf import transforms


def affine_matrix(transform, shape):
  """Builds A and b of x -> A x + b from forward passes on basis images only (no autodiff)."""
  size = int(np.prod(shape))
  basis = np.eye(size, dtype=np.float32).reshape((size,) + shape)
  offset = transform(tf.zeros((1,) + shape)).numpy().reshape(-1)
  columns = transform(tf.constant(basis)).numpy().reshape(size, -1) - offset
  return columns.T, offset


class TransformTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(
      ('channel_average', (8, 8, 3), (8, 8, 1)),
      ('center_crop:6', (8, 8, 3), (6, 6, 3)),
      ('channel_average,center_crop:6', (8, 8, 3), (6, 6, 1)),
      ('resize:12', (8, 8, 3), (12, 12, 3)),
      ('resize:4', (8, 8, 3), (4, 4, 3)),
      ('avg_pool', (8, 8, 3), (4, 4, 3)),
      ('center_pad:12', (8, 8, 3), (12, 12, 3)),
      ('random_pad:12', (8, 8, 3), (12, 12, 3)),
      ('transpose_conv', (8, 8, 3), (16, 16, 3)),
      ('', (8, 8, 3), (8, 8, 3)),
  )
  def test_shapes(self, spec, shape, expected):
    transform = transforms.TeacherTransform(spec)
    self.assertEqual(transform(tf.zeros((2,) + shape), training=True).shape, (2,) + expected)
    self.assertEqual(transform.output_image_shape(shape), expected)

  @parameterized.parameters('channel_average', 'center_crop:6', 'channel_average,center_crop:6',
                            'resize:12', 'resize:5', 'avg_pool', 'center_pad:12',
                            'random_pad:12', 'transpose_conv', 'channel_average,resize:11')
  def test_input_gradient_is_transpose_of_teacher_gradient(self, spec):
    shape = (8, 8, 3)
    transform = transforms.TeacherTransform(spec)  # inference mode: random_pad is centred
    a, _ = affine_matrix(transform, shape)
    x = tf.random.stateless_uniform((1,) + shape, seed=(1, 2))
    out_shape = transform(x).shape
    teacher_gradient = tf.random.stateless_normal(out_shape, seed=(3, 4))
    with tf.GradientTape() as tape:
      tape.watch(x)
      # A loss whose gradient at the teacher's input is exactly `teacher_gradient`.
      loss = tf.reduce_sum(transform(x) * teacher_gradient)
    gradient = tape.gradient(loss, x).numpy().reshape(-1)
    expected = a.T @ teacher_gradient.numpy().reshape(-1)
    self.assertAllClose(gradient, expected, atol=1e-5)

  def test_center_crop_and_pad_are_each_others_transpose(self):
    crop, _ = affine_matrix(transforms.TeacherTransform('center_crop:4'), (8, 8, 1))
    pad, _ = affine_matrix(transforms.TeacherTransform('center_pad:8'), (4, 4, 1))
    self.assertAllEqual(crop.T, pad)

  def test_avg_pool_equals_bilinear_half_resize(self):
    # The paper: a 2x2 average pool is bilinear resizing to half the size.
    x = tf.random.stateless_uniform((2, 8, 8, 3), seed=(5, 6))
    self.assertAllClose(transforms.TeacherTransform('avg_pool')(x),
                        tf.image.resize(x, (4, 4), method='bilinear'))

  def test_random_pad_moves_the_image_when_training(self):
    transform = transforms.TeacherTransform('random_pad:16')
    x = tf.random.stateless_uniform((1, 8, 8, 1), seed=(7, 8)) + 0.1
    centred = transform(x, training=False)
    self.assertAllClose(centred[:, 4:12, 4:12], x)
    placements = set()
    for _ in range(20):
      padded = transform(x, training=True).numpy()[0, :, :, 0]
      self.assertAllClose(padded.sum(), x.numpy().sum(), rtol=1e-5)  # nothing cut off
      rows, cols = np.nonzero(padded)
      placements.add((rows.min(), cols.min()))
    self.assertGreater(len(placements), 1)

  def test_transpose_conv_is_trainable(self):
    transform = transforms.TeacherTransform('transpose_conv')
    transform(tf.zeros((1, 8, 8, 3)))
    self.assertLen(transform.trainable_weights, 2)
    self.assertEmpty(transforms.TeacherTransform('resize:16,center_pad:20').trainable_weights)

  def test_gradient_window_crops_both_maps_to_what_the_teacher_sees(self):
    transform = transforms.TeacherTransform('channel_average,center_crop:28')
    window = transform.gradient_window((32, 32, 3))
    self.assertEqual(window, transforms.GradientWindow(2, 2, 28, 28))
    self.assertEqual(window.crop(tf.zeros((5, 32, 32, 3))).shape, (5, 28, 28, 3))
    # The teacher's gradient is zero outside the window.
    x = tf.random.stateless_uniform((1, 32, 32, 3), seed=(9, 10))
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(tf.square(transform(x)))
    gradient = tape.gradient(loss, x).numpy()
    inside = np.zeros_like(gradient, dtype=bool)
    inside[:, 2:30, 2:30] = True
    self.assertAllEqual(gradient[~inside], np.zeros((~inside).sum()))
    self.assertIsNone(transforms.TeacherTransform('resize:64').gradient_window((32, 32, 3)))

  @parameterized.parameters(
      ('blur:3', 'Unknown teacher transform'),
      ('center_crop', 'needs a size'),
      ('channel_average:3', 'takes no argument'),
      ('resize:big', 'Bad argument'),
      ('resize:0', 'resize:0: the size must be a positive integer'),
      ('center_pad:-3', 'must be a positive integer'),
  )
  def test_bad_specs_name_the_problem(self, spec, message):
    with self.assertRaisesRegex(ValueError, message):
      transforms.TeacherTransform(spec)

  def test_crop_after_resize_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'center_crop must come before'):
      transforms.TeacherTransform('resize:64,center_crop:56').gradient_window((32, 32, 3))
    with self.assertRaisesRegex(ValueError, 'larger than'):
      transforms.TeacherTransform('center_crop:40').gradient_window((32, 32, 3))

  @parameterized.parameters(
      ('center_crop:40', (32, 32, 3), 'center_crop:40 is larger than the 32x32 input'),
      ('center_pad:28', (32, 32, 3), 'center_pad:28 is smaller than the 32x32 input'),
      ('random_pad:16', (32, 32, 3), 'random_pad:16 is smaller than the 32x32 input'),
      ('avg_pool:4', (2, 2, 1), 'avg_pool:4 needs an input of at least 4x4'),
  )
  def test_sizes_that_do_not_fit_the_images_are_refused_by_shape(self, spec, shape, message):
    with self.assertRaisesRegex(ValueError, f"Teacher transform '{spec}' on .*{message}"):
      transforms.TeacherTransform(spec).output_image_shape(shape)

  def test_a_teacher_refuses_images_its_source_cannot_take_in_one_line(self):
    source = madry_models.MadryMNIST(num_classes=3)
    source(tf.zeros((1, 28, 28, 1)))
    for spec, shape, made in (('', (16, 16, 1), 'there is no transform'),
                              # A 1-channel conv would take 3 channels as a grouped conv.
                              ('resize:28', (8, 8, 3), "'resize:28' makes them 28x28x3")):
      with self.subTest(spec):
        with self.assertRaisesRegex(ValueError, r'^The teacher\'s source model takes 28x28x1 '
                                    rf'images: .*{made}') as raised:
          teacher.Teacher(source, 3, spec)(tf.zeros((1,) + shape))
        self.assertNotIn('\n', str(raised.exception))
    fitted = teacher.Teacher(source, 3, 'channel_average,resize:28')
    self.assertEqual(fitted(tf.zeros((2, 8, 8, 3))).shape, (2, 3))


if __name__ == '__main__':
  tf.test.main()
