"""Image classification data as tf.data pipelines: float32 images in [0, 1], NHWC.

`load_dataset` turns a dataset spec into an unbatched dataset of (image, int64 label);
`make_pipeline` shuffles, augments, batches and prefetches one. Their arguments mirror a
training binary's flags: --dataset, --data_dir, --classes, --image_size for the first,
--augment and --pixel_noise for the second.

Dataset specs:
  mnist, fashion_mnist, cifar10, cifar100
      TFDS, read from `data_dir` (TFDS's default when None) and never downloaded.
      Splits 'train' and 'test'.
  tfds:NAME[:SPLIT]
      Any TFDS image classification dataset (one with an image and a class label as
      its supervised keys), e.g. tfds:svhn_cropped or tfds:imagenette/160px:validation.
      Split 'train' is TFDS's 'train'; split 'test' is TFDS's SPLIT ('test' when not
      given; TFDS's slicing works, e.g. test[:1000]). Images of varying size need
      `image_size`.
  digits
      scikit-learn's bundled 8x8 handwritten digits, upsampled to 28x28 (real data that
      works offline). A fixed stratified 70/30 split: 'train' (1257) and 'test' (540).
  idx:DIR
      The four MNIST-format IDX files in DIR (train-images-idx3-ubyte, ...), gzipped or
      not. Splits 'train' and 'test' (the t10k files).
  tiny_imagenet:DIR
      A stock `tiny-imagenet-200` folder. Splits 'train' and 'validation' ('test' is an
      alias, as the stock test set is unlabelled).
  npz:PATH
      A .npz file with `images` (uint8 0..255 or float [0, 1]; NHWC or NHW) and `labels`
      (ints), and optionally `num_classes` (else the largest label + 1). A `{split}` in
      PATH is replaced by the split name, e.g. npz:/data/svhn_{split}.npz; without one the
      same file serves every split.
`data_dir` is used only by the TFDS datasets.
"""

import collections.abc
import dataclasses
import numbers
import os

import numpy as np
import tensorflow as tf

from igam_tf import data_files
from igam_tf.data_files import DataError  # a dataset spec, split or file that cannot be loaded

TFDS_DATASETS = ('mnist', 'fashion_mnist', 'cifar10', 'cifar100')
AUGMENTATIONS = ('none', 'madry')
VALID_SPECS = ('mnist, fashion_mnist, cifar10, cifar100, tfds:NAME[:SPLIT], digits, '
               'idx:DIR, tiny_imagenet:DIR, npz:PATH')
DIGITS_IMAGE_SIZE = 28  # the MNIST models' input size
# The original pads 32x32 to 36x36 (`resize_image_with_crop_or_pad(img, 36, 36)`).
MADRY_PAD_PER_SIDE = 2



@dataclasses.dataclass(frozen=True)
class DatasetSplit:
  """One split of a dataset.

  Attributes:
    dataset: unbatched `tf.data.Dataset` of (float32 image [H, W, C] in [0, 1], int64 label).
    num_classes: labels lie in [0, num_classes).
    image_shape: (H, W, C).
    num_examples: the split's size, or None where it is not known without a pass over it
      (a TFDS split filtered by `classes`).
    name: the dataset spec it was loaded from.
    split: the split asked for.
  """
  dataset: tf.data.Dataset
  num_classes: int
  image_shape: tuple
  num_examples: int | None
  name: str
  split: str


@dataclasses.dataclass(frozen=True)
class _Source:
  """A split before class selection, decoding and resizing."""
  examples: tf.data.Dataset  # (raw, int64 label); `decode` turns raw into an image
  decode: collections.abc.Callable  # raw -> float32 image in [0, 1]
  num_classes: int
  image_shape: tuple  # after `decode`
  labels: np.ndarray | None  # every label, where known without a pass over the data
  num_examples: int | None
  default_image_size: int | None = None


def load_dataset(name, split, *, data_dir=None, image_size=None, classes=None):
  """Loads one split of a dataset as unbatched (image, label) pairs.

  Args:
    name: a dataset spec (see the module docstring), e.g. 'cifar10' or 'idx:/data/mnist'.
    split: 'train' or 'test' ('validation' too for Tiny-ImageNet).
    data_dir: where TFDS datasets are prepared; None for TFDS's default.
    image_size: resize (bilinear) to image_size x image_size; None keeps the native size
      (28 for digits).
    classes: keep only these class ids, relabelled 0..K-1 in the given order; ints or
      strings of ints (an absl list flag). None or empty keeps every class.

  Returns:
    A `DatasetSplit`.

  Raises:
    DataError: an unknown spec or split, missing or malformed files, a TFDS dataset that
      is not prepared, or bad `classes` or `image_size`.
  """
  if image_size is not None:
    if (isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral)
        or image_size < 1):
      raise DataError(f'image_size must be a positive int or None, got {image_size!r}.')
    image_size = int(image_size)
  classes = list(classes) if classes is not None else []
  source = _load_source(name.strip(), split, data_dir)
  if None in source.image_shape and image_size is None:
    raise DataError(f'Dataset {name!r} has images of varying size '
                    f'({"x".join(str(d) for d in source.image_shape)}): give an image size '
                    f'(--image_size) to resize them to.')
  examples = source.examples
  num_classes, num_examples = source.num_classes, source.num_examples
  if classes:
    classes = _check_classes(classes, source.num_classes)
    examples = _keep_classes(examples, classes, source.num_classes)
    num_classes = len(classes)
    num_examples = (int(np.isin(source.labels, classes).sum())
                    if source.labels is not None else None)
  image_shape, to_shape = _resizer(image_size or source.default_image_size, source.image_shape)
  decode = source.decode
  dataset = examples.map(lambda raw, label: (to_shape(decode(raw)), label),
                         num_parallel_calls=tf.data.AUTOTUNE)
  if num_examples is not None:
    # Filtering loses the cardinality; Keras and step counts want it back.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_examples))
  return DatasetSplit(dataset=dataset, num_classes=num_classes, image_shape=image_shape,
                      num_examples=num_examples, name=name, split=split)


def make_pipeline(dataset, batch_size, *, training, augment=None, pixel_noise=0.,
                  seed=None, drop_remainder=None, shuffle_buffer=10_000):
  """Batches (image, label) pairs for training or evaluation.

  When training: shuffles (anew each epoch), then augments and adds pixel noise per
  example. Otherwise the order and the images are left as they are. Does not repeat.

  Args:
    dataset: a `DatasetSplit` or an unbatched (image, label) `tf.data.Dataset`.
    batch_size: examples per batch.
    training: whether to shuffle, augment and add noise.
    augment: None or 'none', or 'madry': MadryLab's CIFAR augmentation (zero-pad
      MADRY_PAD_PER_SIDE pixels, random crop back to size, random horizontal flip).
    pixel_noise: add U(-pixel_noise, pixel_noise) to every pixel, then clip to [0, 1];
      on the [0, 1] scale (the IGAM authors' U(-8, 8) on 0..255 is 8 / 255).
    seed: makes shuffling, augmentation and noise repeatable; None for fresh randomness.
    drop_remainder: drop a last partial batch; None means `training`.
    shuffle_buffer: examples in the shuffle buffer.

  Returns:
    A batched, prefetched `tf.data.Dataset`.
  """
  if isinstance(dataset, DatasetSplit):
    dataset = dataset.dataset
  augment = augment or 'none'
  if augment not in AUGMENTATIONS:
    raise DataError(f'Unknown augmentation {augment!r}; expected one of {AUGMENTATIONS}.')
  if not 0 <= pixel_noise <= 1:
    raise DataError(f'pixel_noise must lie in [0, 1] (the [0, 1] pixel scale), got '
                    f'{pixel_noise!r}.')
  if batch_size < 1:
    raise DataError(f'batch_size must be positive, got {batch_size!r}.')
  if drop_remainder is None:
    drop_remainder = training
  if training:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if augment != 'none' or pixel_noise:
      # One stateless seed per example: repeatable under `seed`, new every epoch.
      seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
      perturb = _perturber(augment == 'madry', pixel_noise)
      dataset = tf.data.Dataset.zip(dataset, seeds).map(
          lambda example, seed_pair: (perturb(example[0], seed_pair), example[1]),
          num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def restartable(make_dataset):
  """The dataset `make_dataset()` builds, such that every iterator over it yields what
  the first iterator over a freshly built one yields.

  A seeded shuffle or random op draws new seeds for each new iterator over the same
  dataset object; Keras iterates a distributed dataset once before training (to build
  the model), so without this the replicas would train on another order than one
  device does, and a resumed run's order would depend on how it was iterated. Built
  inside a dataset function, the pipeline's seeded ops start afresh with each iterator.
  """
  return tf.data.Dataset.range(1).flat_map(lambda unused_index: make_dataset())


def _perturber(madry_augment, pixel_noise):
  def perturb(image, seed):
    crop_seed, flip_seed, noise_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=3))
    if madry_augment:
      shape = image.shape if image.shape.is_fully_defined() else tf.shape(image)
      image = tf.image.resize_with_crop_or_pad(image, shape[0] + 2 * MADRY_PAD_PER_SIDE,
                                               shape[1] + 2 * MADRY_PAD_PER_SIDE)
      image = tf.image.stateless_random_crop(image, shape, seed=crop_seed)
      image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    if pixel_noise:
      image += tf.random.stateless_uniform(tf.shape(image), noise_seed, -pixel_noise,
                                           pixel_noise)
      image = tf.clip_by_value(image, 0., 1.)
    return image
  return perturb


def _load_source(name, split, data_dir):
  kind, _, path = name.partition(':')
  if name in TFDS_DATASETS:
    return _tfds_source(name, _check_split(split, ('train', 'test'), name), data_dir)
  if name == 'digits':
    return _digits_source(_check_split(split, ('train', 'test'), name))
  if kind in ('tfds', 'idx', 'tiny_imagenet', 'npz') and not path:
    example = 'tfds:svhn_cropped' if kind == 'tfds' else f'{kind}:/data/...'
    raise DataError(f'Dataset spec {name!r} needs {"a name" if kind == "tfds" else "a path"} '
                    f'after the colon, e.g. {example}; valid forms: {VALID_SPECS}.')
  if kind == 'tfds':
    tfds_name, _, test_split = path.partition(':')
    split = _check_split(split, ('train', 'test'), name)
    return _tfds_source(tfds_name, 'train' if split == 'train' else test_split or 'test',
                        data_dir)
  if kind == 'idx':
    return _in_memory_source(*data_files.read_idx(
        os.path.expanduser(path), _check_split(split, ('train', 'test'), name)))
  if kind == 'tiny_imagenet':
    split = _check_split(split, tuple(data_files.TINY_IMAGENET_SPLITS), name)
    return _jpeg_source(*data_files.read_tiny_imagenet(
        os.path.expanduser(path), data_files.TINY_IMAGENET_SPLITS[split]))
  if kind == 'npz':
    return _in_memory_source(*data_files.read_npz(os.path.expanduser(path), split))
  raise DataError(f'Unknown dataset {name!r}; valid forms: {VALID_SPECS}.')


def _check_split(split, valid, name):
  if split not in valid:
    raise DataError(f'Dataset {name!r} has no split {split!r}; valid splits: {valid}.')
  return split


def _check_classes(classes, num_classes):
  try:
    classes = [int(c) for c in classes]
  except (TypeError, ValueError):
    raise DataError(f'classes must be integer class ids, got {classes!r}.') from None
  out_of_range = [c for c in classes if not 0 <= c < num_classes]
  if out_of_range:
    raise DataError(f'Class ids {out_of_range} are out of range: this dataset has '
                    f'{num_classes} classes (0..{num_classes - 1}).')
  if len(set(classes)) != len(classes):
    raise DataError(f'classes repeats a class id: {classes}.')
  return classes


def _keep_classes(examples, classes, num_classes):
  new_label = np.full(num_classes, -1, np.int64)
  new_label[classes] = np.arange(len(classes))
  new_label = tf.constant(new_label)
  examples = examples.map(lambda raw, label: (raw, tf.gather(new_label, label)))
  return examples.filter(lambda raw, label: label >= 0)


def _resizer(image_size, image_shape):
  """Returns the output image shape and a function that gives images that shape."""
  height, width, channels = image_shape
  if image_size is None or (image_size, image_size) == (height, width):
    return tuple(image_shape), lambda image: tf.ensure_shape(image, image_shape)

  def resize(image):
    image = tf.image.resize(image, (image_size, image_size), method='bilinear')
    return tf.ensure_shape(tf.clip_by_value(image, 0., 1.), (image_size, image_size, channels))
  return (image_size, image_size, channels), resize


def _uint8_to_unit(image):
  return tf.cast(image, tf.float32) / 255.


def _in_memory_source(images, labels, num_classes, default_image_size=None):
  """A source over numpy arrays; uint8 images are scaled lazily to save memory."""
  labels = labels.astype(np.int64)
  decode = _uint8_to_unit if images.dtype == np.uint8 else tf.identity
  examples = tf.data.Dataset.from_tensor_slices((images, labels))
  return _Source(examples=examples, decode=decode, num_classes=num_classes,
                 image_shape=tuple(images.shape[1:]), labels=labels,
                 num_examples=len(labels), default_image_size=default_image_size)


def _tfds_source(name, split, data_dir):
  # Imported here as it is slow to import and only TFDS specs need it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f'No TFDS dataset named {name!r} (see `tfds.list_builders()`).') from None
  image_key, label_key = builder.info.supervised_keys or (None, None)
  features = builder.info.features
  if not (image_key in features and isinstance(features[image_key], tfds.features.Image)
          and label_key in features
          and isinstance(features[label_key], tfds.features.ClassLabel)):
    raise DataError(f'TFDS dataset {name!r} is not an image classification dataset: its '
                    f'supervised keys are not an image and a class label.')
  try:
    examples = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
  except AssertionError:  # how TFDS says "not prepared"
    if builder.is_prepared():
      raise
    root = os.path.dirname(os.path.dirname(builder.data_dir))
    raise DataError(
        f'TFDS dataset {name!r} is not prepared in data_dir {root}: expected its files in '
        f'{builder.data_dir} (<data_dir>/<name>/<version>). Loading never downloads, and '
        f'`tfds build` needs the network: run `tfds build {name} --data_dir=DIR` on a '
        f'machine that has it, then copy DIR/{name} into {root} or pass data_dir=DIR.'
    ) from None
  except ValueError as e:  # an unknown split, or bad slicing
    raise DataError(f'TFDS dataset {name!r} has no split {split!r} '
                    f'(its splits: {", ".join(sorted(builder.info.splits))}): '
                    f'{str(e).splitlines()[0]}') from None
  num_examples = int(examples.cardinality())
  if num_examples < 0:
    num_examples = builder.info.splits[split].num_examples
  return _Source(examples=examples, decode=_uint8_to_unit,
                 num_classes=features[label_key].num_classes,
                 image_shape=tuple(features[image_key].shape), labels=None,
                 num_examples=num_examples)


def _digits_source(split):
  # Imported here as it is slow to import and only this spec needs it.
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = (digits.images / 16.).astype(np.float32)[..., np.newaxis]  # 0..16 -> [0, 1]
  train_images, test_images, train_labels, test_labels = model_selection.train_test_split(
      images, digits.target, test_size=0.3, stratify=digits.target, random_state=0)
  if split == 'train':
    return _in_memory_source(train_images, train_labels, 10, DIGITS_IMAGE_SIZE)
  return _in_memory_source(test_images, test_labels, 10, DIGITS_IMAGE_SIZE)


def _jpeg_source(paths, labels, num_classes):
  image_shape = tuple(_decode_jpeg(paths[0]).shape)  # 64x64x3 in stock Tiny-ImageNet
  examples = tf.data.Dataset.from_tensor_slices((paths, labels))
  return _Source(examples=examples, decode=_decode_jpeg, num_classes=num_classes,
                 image_shape=image_shape, labels=labels, num_examples=len(labels))


def _decode_jpeg(path):
  # channels=3 stacks grayscale JPEGs (a few hundred in Tiny-ImageNet) to RGB.
  return _uint8_to_unit(tf.io.decode_jpeg(tf.io.read_file(path), channels=3))
