"""Tests igam_tf.visualization and the igam_tf.visualize binary."""

import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from igam_tf import data
from igam_tf import model_io
from igam_tf import model_sources
from igam_tf import serving
from igam_tf import visualization
from igam_tf.input_gradients import input_gradients

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SHAPE = (28, 28, 1)


def expected_size(rows, columns, image_size, zoom, header_lines=1):
  cell = image_size * zoom
  pad = visualization.PADDING
  header = header_lines * visualization.LINE_HEIGHT + pad
  return header + rows * cell + (rows + 1) * pad, columns * cell + (columns + 1) * pad


class VisualizeTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    tf.keras.utils.set_random_seed(0)
    cls.folder = tempfile.mkdtemp()
    spec = model_io.classifier_spec('simple_cnn', 10, IMAGE_SHAPE, filters=(8, 8))
    cls.model = model_io.build_model(spec)
    cls.model_dir = os.path.join(cls.folder, 'cnn')
    model_io.save_model(cls.model_dir, cls.model, spec)
    cls.export_dir = os.path.join(cls.folder, 'cnn_export')
    serving.export_classifier(cls.model, cls.export_dir, IMAGE_SHAPE)
    images, labels = next(iter(data.load_dataset('digits', 'test').dataset.batch(4)))
    cls.images, cls.labels = images.numpy(), labels.numpy()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.folder)
    super().tearDownClass()

  def test_every_model_is_scaled_the_same_way(self):
    served = model_sources.load(self.export_dir, 'served').model  # input_gradients signature
    grid = visualization.gradient_grid({'keras': self.model, 'served': served},
                                       self.images, self.labels, zoom=1)
    self.assertEqual(grid.dtype, np.uint8)
    # 28-pixel cells fit 4 characters a line: KERAS and SERVED take two.
    self.assertEqual(grid.shape, expected_size(4, 3, 28, 1, header_lines=2) + (3,))

    def cell(row, column):
      pad, top = visualization.PADDING, 2 * visualization.LINE_HEIGHT + 2 * visualization.PADDING
      y, x = top + row * (28 + pad), pad + column * (28 + pad)
      return grid[y:y + 28, x:x + 28, 0].astype(int)

    gradients, _ = input_gradients(
        lambda x: self.model(x, training=False), tf.constant(self.images), self.labels)
    for row in range(4):
      self.assertAllEqual(cell(row, 0), np.round(self.images[row, ..., 0] * 255))
      # Per image, symmetric: zero is mid-gray and the largest |gradient| black or white.
      g = gradients[row, ..., 0].numpy()
      expected = np.round((0.5 + 0.5 * g / (np.abs(g).max() + 1e-12)) * 255)
      self.assertAllClose(cell(row, 1), expected, atol=1)
      self.assertAllClose(cell(row, 2), cell(row, 1), atol=1)
      self.assertTrue(cell(row, 1).min() == 0 or cell(row, 1).max() == 255)

  def test_long_names_wrap_into_a_taller_header(self):
    grid = visualization.gradient_grid({'a_rather_long_model_name': self.model},
                                       self.images[:1], self.labels[:1], zoom=1)
    self.assertEqual(visualization.wrap('a_rather_long_model_name', 28),
                     ['A_RA', 'THER', '_LON', 'G_MO', 'DEL_', 'NAME'])
    self.assertEqual(grid.shape[:2], expected_size(1, 2, 28, 1, header_lines=6))
    header = grid[:visualization.PADDING + 6 * visualization.LINE_HEIGHT]
    self.assertGreater(np.sum(header == 0), 50)  # text was drawn

  def test_binary_writes_a_png_of_the_expected_size(self):
    output = os.path.join(self.folder, 'grid.png')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['TF_CPP_MIN_LOG_LEVEL'] = '2'
    result = subprocess.run(
        [sys.executable, '-m', 'igam_tf.visualize',
         f'--models=trained={self.model_dir},served={self.export_dir}', '--dataset=digits',
         '--num_images=3', f'--output={output}'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('served: input gradients of saved_model', result.stdout)
    grid = tf.io.decode_png(tf.io.read_file(output)).numpy()
    zoom = visualization.default_zoom(IMAGE_SHAPE)
    self.assertEqual(zoom, 3)
    self.assertEqual(grid.shape, expected_size(3, 3, 28, zoom) + (3,))


if __name__ == '__main__':
  tf.test.main()
