"""Tests for igam_tf.data: every dataset spec, class selection, resizing and pipelines."""

import gzip
import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from igam_tf import data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `python -m MODULE ARGS...` (sys.argv[1:]) with TFDS's generated data instead of files.
_MOCK_TFDS_RUNNER = """
import runpy, sys
import tensorflow_datasets as tfds
sys.argv = sys.argv[1:]
with tfds.testing.mock_data(num_examples=64):
  runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
"""

def _as_numpy(dataset):
  """All (images, labels) of an unbatched dataset as two arrays."""
  images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
  return np.stack(images), np.array(labels)


def _write_idx(path, array, magic, compress):
  header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  payload = header + array.astype(np.uint8).tobytes()
  with open(path, 'wb') as f:
    f.write(gzip.compress(payload) if compress else payload)


def _write_jpeg(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tf.io.write_file(path, tf.io.encode_jpeg(image, quality=100))


class TfdsTest(parameterized.TestCase, tf.test.TestCase):

  @parameterized.parameters(('mnist', (28, 28, 1)), ('cifar10', (32, 32, 3)))
  def test_mock_data(self, name, image_shape):
    with tfds.testing.mock_data(num_examples=6):
      split = data.load_dataset(name, 'train', data_dir=self.get_temp_dir())
      images, labels = _as_numpy(split.dataset)
    self.assertEqual(split.image_shape, image_shape)
    self.assertEqual((split.num_classes, split.num_examples), (10, 6))
    self.assertEqual(images.shape, (6,) + image_shape)
    self.assertEqual(images.dtype, np.float32)
    self.assertEqual(labels.dtype, np.int64)
    self.assertBetween(images.min(), 0., 1.)
    self.assertBetween(images.max(), 0., 1.)
    self.assertTrue(np.all((labels >= 0) & (labels < 10)))

  def test_mock_data_with_classes_and_resize(self):
    with tfds.testing.mock_data(num_examples=20):
      split = data.load_dataset('cifar10', 'test', image_size=16, classes=[1, 2, 6])
      batches = list(data.make_pipeline(split, 4, training=False))
    self.assertEqual((split.num_classes, split.image_shape), (3, (16, 16, 3)))
    self.assertIsNone(split.num_examples)  # not known without a pass
    for images, labels in batches:
      self.assertEqual(images.shape[1:], (16, 16, 3))
      self.assertAllInSet(labels, [0, 1, 2])

  def test_any_tfds_image_classification_dataset_by_name(self):
    with tfds.testing.mock_data(num_examples=6):
      train = data.load_dataset('tfds:svhn_cropped', 'train')
      test = data.load_dataset('tfds:imagenette/160px:validation', 'test', image_size=24,
                               classes=[0, 3])
      images, labels = _as_numpy(train.dataset)
      resized, _ = _as_numpy(test.dataset)
    self.assertEqual((train.image_shape, train.num_classes, train.num_examples),
                     ((32, 32, 3), 10, 6))
    self.assertEqual(images.shape, (6, 32, 32, 3))
    self.assertBetween(images.max(), 0., 1.)
    self.assertTrue(np.all((labels >= 0) & (labels < 10)))
    self.assertEqual((test.image_shape, test.num_classes), ((24, 24, 3), 2))
    self.assertEqual(resized.shape[1:], (24, 24, 3))

  def test_tfds_specs_that_cannot_load_say_why(self):
    with tfds.testing.mock_data(num_examples=6):
      for spec, split, message in (
          ('tfds:', 'train', 'needs a name after the colon'),
          ('tfds:no_such_dataset', 'train', "No TFDS dataset named 'no_such_dataset'"),
          ('tfds:glue/cola', 'train', 'not an image classification dataset'),
          ('tfds:imagenette/160px:validation', 'test', 'varying size'),
          ('tfds:svhn_cropped', 'validation', "no split 'validation'")):
        with self.subTest(spec=spec, split=split), \
            self.assertRaisesRegex(data.DataError, message):
          data.load_dataset(spec, split, image_size=24 if split == 'train' else None)

  def test_not_prepared_fails_fast_with_where_to_put_it(self):
    empty = os.path.join(self.get_temp_dir(), 'empty')
    os.makedirs(empty)
    # No download is attempted: any network connection fails the test.
    with mock.patch('socket.socket.connect', side_effect=AssertionError('network used')), \
        self.assertRaisesRegex(data.DataError, 'not prepared') as raised:
      data.load_dataset('mnist', 'train', data_dir=empty)
    message = str(raised.exception)
    self.assertIn(os.path.join(empty, 'mnist', ''), message)
    self.assertIn('<data_dir>/<name>/<version>', message)
    self.assertIn('tfds build mnist', message)


class IdxTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.folder = self.get_temp_dir()
    rng = np.random.default_rng(0)
    self.images = {s: rng.integers(0, 256, (n, 5, 4), dtype=np.uint8)
                   for s, n in (('train', 7), ('t10k', 3))}
    self.labels = {'train': np.array([0, 1, 2, 3, 4, 5, 9]), 't10k': np.array([3, 1, 4])}
    for prefix, compress in (('train', True), ('t10k', False)):
      suffix = '.gz' if compress else ''
      _write_idx(os.path.join(self.folder, f'{prefix}-images-idx3-ubyte{suffix}'),
                 self.images[prefix], 2051, compress)
      _write_idx(os.path.join(self.folder, f'{prefix}-labels-idx1-ubyte{suffix}'),
                 self.labels[prefix], 2049, compress)

  def test_reads_gzipped_and_raw_files(self):
    for split, prefix in (('train', 'train'), ('test', 't10k')):
      loaded = data.load_dataset(f'idx:{self.folder}', split)
      images, labels = _as_numpy(loaded.dataset)
      self.assertEqual((loaded.image_shape, loaded.num_classes), ((5, 4, 1), 10))
      self.assertEqual(loaded.num_examples, len(self.labels[prefix]))
      self.assertAllClose(images[..., 0], self.images[prefix] / 255.)
      self.assertAllEqual(labels, self.labels[prefix])

  def test_bad_magic_names_the_file(self):
    path = os.path.join(self.folder, 't10k-labels-idx1-ubyte')
    _write_idx(path, self.labels['t10k'], 2051, compress=False)
    with self.assertRaisesRegex(data.DataError, f'{path}.*magic number 2049'):
      data.load_dataset(f'idx:{self.folder}', 'test')

  def test_truncated_file(self):
    path = os.path.join(self.folder, 't10k-images-idx3-ubyte')
    with open(path, 'rb+') as f:
      f.truncate(30)
    with self.assertRaisesRegex(data.DataError, f'{path}.*truncated or corrupt'):
      data.load_dataset(f'idx:{self.folder}', 'test')

  def test_corrupt_gzip(self):
    path = os.path.join(self.folder, 'train-images-idx3-ubyte.gz')
    with open(path, 'rb') as f:
      head = f.read(20)
    with open(path, 'wb') as f:
      f.write(head)
    with self.assertRaisesRegex(data.DataError, f'{path}.*gzip'):
      data.load_dataset(f'idx:{self.folder}', 'train')

  def test_missing_file_and_count_mismatch(self):
    os.remove(os.path.join(self.folder, 't10k-labels-idx1-ubyte'))
    with self.assertRaisesRegex(data.DataError, 'No t10k-labels-idx1-ubyte or .*gz'):
      data.load_dataset(f'idx:{self.folder}', 'test')
    _write_idx(os.path.join(self.folder, 't10k-labels-idx1-ubyte'), np.zeros(2), 2049, False)
    with self.assertRaisesRegex(data.DataError, '2 labels but .* 3 images'):
      data.load_dataset(f'idx:{self.folder}', 'test')


class TinyImagenetTest(tf.test.TestCase):

  WNIDS = ('n01443537', 'n01629819', 'n01641577')
  # Solid colours tell the classes apart after JPEG and the training shuffle.
  COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))

  def setUp(self):
    super().setUp()
    self.root = os.path.join(self.get_temp_dir(), 'tiny-imagenet-200')
    os.makedirs(self.root)
    with open(os.path.join(self.root, 'wnids.txt'), 'w') as f:
      f.write('\n'.join(self.WNIDS) + '\n')
    for wnid, colour in zip(self.WNIDS, self.COLOURS):
      for i in range(2):
        image = tf.broadcast_to(tf.constant(colour, tf.uint8), (8, 8, 3))
        _write_jpeg(os.path.join(self.root, 'train', wnid, 'images', f'{wnid}_{i}.JPEG'), image)
    gray = tf.fill((8, 8, 1), tf.constant(128, tf.uint8))
    _write_jpeg(os.path.join(self.root, 'train', self.WNIDS[1], 'images', 'gray.JPEG'), gray)
    annotations = []
    for i, wnid in enumerate((self.WNIDS[2], self.WNIDS[0])):
      colour = self.COLOURS[self.WNIDS.index(wnid)]
      image = tf.broadcast_to(tf.constant(colour, tf.uint8), (8, 8, 3))
      _write_jpeg(os.path.join(self.root, 'val', 'images', f'val_{i}.JPEG'), image)
      annotations.append(f'val_{i}.JPEG\t{wnid}\t0\t0\t7\t7')
    with open(os.path.join(self.root, 'val', 'val_annotations.txt'), 'w') as f:
      f.write('\n'.join(annotations) + '\n')

  def test_train_labels_follow_wnids_and_gray_becomes_rgb(self):
    loaded = data.load_dataset(f'tiny_imagenet:{self.root}', 'train')
    self.assertEqual((loaded.num_classes, loaded.num_examples), (3, 7))
    self.assertEqual(loaded.image_shape, (8, 8, 3))
    images, labels = _as_numpy(loaded.dataset)
    self.assertAllEqual(np.bincount(labels), [2, 3, 2])
    means = images.mean(axis=(1, 2))
    gray = np.all(np.abs(means - 128 / 255) < 0.02, axis=1)
    self.assertEqual((gray.sum(), labels[gray][0]), (1, 1))
    for mean, label in zip(means[~gray], labels[~gray]):
      self.assertEqual(np.argmax(mean), label)

  def test_validation_from_annotations_and_test_alias(self):
    for split in ('validation', 'test'):
      loaded = data.load_dataset(f'tiny_imagenet:{self.root}', split)
      images, labels = _as_numpy(loaded.dataset)
      self.assertAllEqual(labels, [2, 0])
      self.assertAllEqual(np.argmax(images.mean(axis=(1, 2)), axis=1), [2, 0])

  def test_resize_and_classes(self):
    loaded = data.load_dataset(f'tiny_imagenet:{self.root}', 'train', image_size=4,
                               classes=[2, 0])
    images, labels = _as_numpy(loaded.dataset)
    self.assertEqual((loaded.num_classes, loaded.num_examples), (2, 4))
    self.assertEqual(images.shape, (4, 4, 4, 3))
    self.assertAllEqual(np.argmax(images.mean(axis=(1, 2)), axis=1), 2 - 2 * labels)

  def test_clear_errors(self):
    with self.assertRaisesRegex(data.DataError, 'no split'):
      data.load_dataset(f'tiny_imagenet:{self.root}', 'val')
    with open(os.path.join(self.root, 'val', 'val_annotations.txt'), 'a') as f:
      f.write('val_9.JPEG\tn99999999\t0\t0\t1\t1\n')
    with self.assertRaisesRegex(data.DataError, 'val_annotations.txt:3'):
      data.load_dataset(f'tiny_imagenet:{self.root}', 'validation')
    os.remove(os.path.join(self.root, 'wnids.txt'))
    with self.assertRaisesRegex(data.DataError, 'no wnids.txt'):
      data.load_dataset(f'tiny_imagenet:{self.root}', 'train')


class DigitsTest(tf.test.TestCase):

  def test_stratified_split_sizes_shape_and_range(self):
    train = data.load_dataset('digits', 'train')
    test = data.load_dataset('digits', 'test')
    self.assertEqual((train.num_examples, test.num_examples), (1257, 540))
    self.assertEqual((train.image_shape, train.num_classes), ((28, 28, 1), 10))
    images, labels = _as_numpy(test.dataset)
    self.assertEqual(images.shape, (540, 28, 28, 1))
    self.assertEqual(images.dtype, np.float32)
    self.assertEqual(images.min(), 0.)
    self.assertBetween(images.max(), 0.9, 1.)
    # Stratified: each digit's share of the test split is ~30% of its examples.
    _, train_labels = _as_numpy(train.dataset)
    shares = np.bincount(labels) / (np.bincount(labels) + np.bincount(train_labels))
    self.assertAllClose(shares, np.full(10, 0.3), atol=0.01)

  def test_deterministic_and_resizable(self):
    first, _ = _as_numpy(data.load_dataset('digits', 'train').dataset.take(5))
    again, _ = _as_numpy(data.load_dataset('digits', 'train').dataset.take(5))
    self.assertAllEqual(first, again)
    small = data.load_dataset('digits', 'train', image_size=8)
    images, _ = _as_numpy(small.dataset.take(5))
    self.assertEqual(images.shape, (5, 8, 8, 1))
    self.assertAllClose(images * 16, np.round(images * 16))  # the raw 0..16 values


class NpzTest(tf.test.TestCase):

  def _save(self, name='data.npz', **arrays):
    path = os.path.join(self.get_temp_dir(), name)
    np.savez(path, **arrays)
    return path

  def test_float_nhwc(self):
    images = np.random.default_rng(0).uniform(size=(5, 4, 4, 3)).astype(np.float64)
    path = self._save(images=images, labels=np.array([0, 1, 2, 1, 0]))
    loaded = data.load_dataset(f'npz:{path}', 'test')
    got, labels = _as_numpy(loaded.dataset)
    self.assertEqual((loaded.num_classes, loaded.image_shape), (3, (4, 4, 3)))
    self.assertEqual(got.dtype, np.float32)
    self.assertAllClose(got, images)
    self.assertAllEqual(labels, [0, 1, 2, 1, 0])

  def test_uint8_grayscale_and_split_pattern(self):
    for split, n in (('train', 4), ('test', 2)):
      self._save(f'digits_{split}.npz', images=np.full((n, 3, 3), 51, np.uint8),
                 labels=np.arange(n), num_classes=10)
    pattern = os.path.join(self.get_temp_dir(), 'digits_{split}.npz')
    for split, n in (('train', 4), ('test', 2)):
      loaded = data.load_dataset(f'npz:{pattern}', split)
      images, _ = _as_numpy(loaded.dataset)
      self.assertEqual((loaded.num_examples, loaded.num_classes), (n, 10))
      self.assertEqual(images.shape, (n, 3, 3, 1))
      self.assertAllClose(images, np.full_like(images, 0.2))

  def test_errors(self):
    labels = np.array([0, 1])
    cases = (
        (dict(pixels=np.zeros((2, 3, 3)), labels=labels), r"lacks \['images'\]"),
        (dict(images=np.full((2, 3, 3), 2.), labels=labels), r'must lie in \[0, 1\]'),
        (dict(images=np.full((2, 3, 3), np.nan), labels=labels), r'must lie in \[0, 1\]'),
        (dict(images=np.zeros((3, 3, 3)), labels=labels), '3 images but 2 labels'),
        (dict(images=np.zeros((2, 3, 3), np.int32), labels=labels), 'uint8'),
        (dict(images=np.zeros((2, 3, 3)), labels=labels * 0.5), '1-D integer'),
        (dict(images=np.zeros((2, 3, 3)), labels=labels, num_classes=1), r'in \[0, 1\)'),
    )
    for arrays, message in cases:
      path = self._save(**arrays)
      with self.assertRaisesRegex(data.DataError, message):
        data.load_dataset(f'npz:{path}', 'train')
    with self.assertRaisesRegex(data.DataError, 'No .npz file'):
      data.load_dataset(f'npz:{path}.missing', 'train')


class ClassesTest(tf.test.TestCase):

  def test_relabels_in_given_order_and_keeps_the_right_images(self):
    images = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1)
    path = os.path.join(self.get_temp_dir(), 'six.npz')
    np.savez(path, images=images, labels=np.array([0, 1, 2, 3, 2, 1]))
    loaded = data.load_dataset(f'npz:{path}', 'train', classes=['2', 0])  # absl list flag
    got, labels = _as_numpy(loaded.dataset)
    self.assertEqual((loaded.num_classes, loaded.num_examples), (2, 3))
    self.assertEqual(loaded.dataset.cardinality(), 3)
    self.assertAllEqual(np.round(got.ravel() * 255), [0, 2, 4])
    self.assertAllEqual(labels, [1, 0, 0])

  def test_bad_classes(self):
    with self.assertRaisesRegex(data.DataError, r'\[10, -1\] are out of range.*10 classes'):
      data.load_dataset('digits', 'test', classes=[3, 10, -1])
    with self.assertRaisesRegex(data.DataError, 'repeats'):
      data.load_dataset('digits', 'test', classes=[3, 3])
    with self.assertRaisesRegex(data.DataError, 'integer class ids'):
      data.load_dataset('digits', 'test', classes=['cat'])


class SpecTest(tf.test.TestCase):

  def test_unknown_names_and_splits(self):
    for name in ('imagenet', 'svhn:/tmp', 'idx:', 'tiny_imagenet'):
      with self.assertRaisesRegex(data.DataError,
                                  'tfds:NAME.*idx:DIR, tiny_imagenet:DIR, npz:PATH'):
        data.load_dataset(name, 'train')
    for name in ('mnist', 'digits', f'idx:{self.get_temp_dir()}'):
      with self.assertRaisesRegex(data.DataError, "no split 'validation'"):
        data.load_dataset(name, 'validation')
    with self.assertRaisesRegex(data.DataError, 'image_size'):
      data.load_dataset('digits', 'test', image_size=0)


class PipelineTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    # Labels number the examples, so outputs can be matched to inputs after shuffling.
    self.images = np.random.default_rng(0).uniform(size=(16, 6, 6, 2)).astype(np.float32)
    self.dataset = tf.data.Dataset.from_tensor_slices((self.images, np.arange(16)))

  def _run(self, **kwargs):
    batches = list(data.make_pipeline(self.dataset, 5, **kwargs))
    return (np.concatenate([x.numpy() for x, _ in batches]),
            np.concatenate([y.numpy() for _, y in batches]), batches)

  def test_identity_when_not_training(self):
    images, labels, batches = self._run(training=False, augment='madry', pixel_noise=0.1)
    self.assertAllEqual(labels, np.arange(16))
    self.assertAllEqual(images, self.images)
    self.assertEqual([len(b[1]) for b in batches], [5, 5, 5, 1])  # keeps the remainder

  def test_madry_augmentation_pads_two_crops_and_flips(self):
    images, labels, batches = self._run(training=True, augment='madry', seed=3)
    self.assertEqual([len(b[1]) for b in batches], [5, 5, 5])  # drops the remainder
    self.assertNotAllEqual(labels, np.sort(labels))  # shuffled
    self.assertEqual(images.shape[1:], (6, 6, 2))
    self.assertBetween(images.min(), 0., 1.)
    self.assertBetween(images.max(), 0., 1.)
    padded = np.pad(self.images, [(0, 0), (2, 2), (2, 2), (0, 0)])
    changed = 0
    for image, label in zip(images, labels):
      views = [padded[label, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
      views += [view[:, ::-1] for view in views]
      self.assertTrue(any(np.array_equal(image, view) for view in views))
      changed += not np.array_equal(image, self.images[label])
    self.assertGreater(changed, 10)

  def test_seed_repeats_and_epochs_differ(self):
    pipeline = data.make_pipeline(self.dataset, 4, training=True, augment='madry',
                                  pixel_noise=0.05, seed=7)
    epoch1 = np.concatenate([x for x, _ in pipeline])
    epoch2 = np.concatenate([x for x, _ in pipeline])
    again = data.make_pipeline(self.dataset, 4, training=True, augment='madry',
                               pixel_noise=0.05, seed=7)
    self.assertAllEqual(epoch1, np.concatenate([x for x, _ in again]))
    self.assertNotAllClose(epoch1, epoch2)

  def test_pixel_noise_is_bounded_and_clipped(self):
    images, labels, _ = self._run(training=True, pixel_noise=8 / 255, seed=0)
    noise = images - self.images[labels]
    self.assertLessEqual(np.abs(noise).max(), 8 / 255 + 1e-6)
    self.assertGreater(np.abs(noise).max(), 4 / 255)
    self.assertBetween(images.min(), 0., 1.)
    self.assertBetween(images.max(), 0., 1.)

  def test_bad_arguments(self):
    with self.assertRaisesRegex(data.DataError, 'Unknown augmentation'):
      data.make_pipeline(self.dataset, 4, training=True, augment='autoaugment')
    with self.assertRaisesRegex(data.DataError, 'pixel_noise'):
      data.make_pipeline(self.dataset, 4, training=True, pixel_noise=8)


class TfdsBinaryTest(tf.test.TestCase):

  def test_a_training_binary_takes_any_tfds_dataset(self):
    model_dir = os.path.join(tempfile.mkdtemp(), 'run')
    result = subprocess.run(
        [sys.executable, '-c', _MOCK_TFDS_RUNNER, 'igam_tf.train_baseline', '--method=standard',
         '--dataset=tfds:svhn_cropped', '--classes=1,7', '--student_architecture=simple_cnn',
         '--student_filters=4,8', '--batch_size=2', '--train_steps=2', '--checkpoint_every=2',
         '--validation_split=', f'--model_dir={model_dir}'],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(model_dir, 'model.json')) as f:
      spec = json.load(f)
    self.assertEqual((spec['num_classes'], spec['image_shape']), (2, [32, 32, 3]))
    with open(os.path.join(model_dir, 'run_config.json')) as f:
      self.assertEqual(json.load(f)['data']['dataset'], 'tfds:svhn_cropped')


if __name__ == '__main__':
  tf.test.main()
