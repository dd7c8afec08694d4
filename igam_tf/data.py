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
import gzip
import numbers
import os
import zlib

import numpy as np
import tensorflow as tf

TFDS_DATASETS = ('mnist', 'fashion_mnist', 'cifar10', 'cifar100')
AUGMENTATIONS = ('none', 'madry')
VALID_SPECS = ('mnist, fashion_mnist, cifar10, cifar100, tfds:NAME[:SPLIT], digits, '
               'idx:DIR, tiny_imagenet:DIR, npz:PATH')
DIGITS_IMAGE_SIZE = 28  # the MNIST models' input size
# The original pads 32x32 to 36x36 (`resize_image_with_crop_or_pad(img, 36, 36)`).
MADRY_PAD_PER_SIDE = 2

_IDX_IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension
_IDX_PREFIXES = {'train': 'train', 'test': 't10k'}
_TINY_IMAGENET_SPLITS = {'train': 'train', 'validation': 'validation', 'test': 'validation'}
_JPEG_SUFFIXES = ('.jpeg', '.jpg')


class DataError(ValueError):
  """A dataset spec, split or file that cannot be loaded."""


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
    return _idx_source(os.path.expanduser(path), _check_split(split, ('train', 'test'), name))
  if kind == 'tiny_imagenet':
    split = _check_split(split, tuple(_TINY_IMAGENET_SPLITS), name)
    return _tiny_imagenet_source(os.path.expanduser(path), _TINY_IMAGENET_SPLITS[split])
  if kind == 'npz':
    return _npz_source(os.path.expanduser(path), split)
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


def _idx_source(folder, split):
  prefix = _IDX_PREFIXES[split]
  images = _read_idx(_find_idx_file(folder, f'{prefix}-images-idx3-ubyte'), _IDX_IMAGES_MAGIC)
  labels_path = _find_idx_file(folder, f'{prefix}-labels-idx1-ubyte')
  labels = _read_idx(labels_path, _IDX_LABELS_MAGIC)
  if len(images) != len(labels):
    raise DataError(f'{labels_path} has {len(labels)} labels but its images file has '
                    f'{len(images)} images.')
  # At least 10 classes, so that a split missing the top digit still has 10.
  num_classes = max(10, int(labels.max(initial=0)) + 1)
  return _in_memory_source(images[..., np.newaxis], labels, num_classes)


def _find_idx_file(folder, name):
  if not os.path.isdir(folder):
    raise DataError(f'IDX folder {folder!r} does not exist.')
  # Some mirrors spell `train-images.idx3-ubyte`.
  for base in (name, name.replace('-idx', '.idx')):
    for suffix in ('', '.gz'):
      path = os.path.join(folder, base + suffix)
      if os.path.isfile(path):
        return path
  raise DataError(f'No {name} or {name}.gz in IDX folder {folder!r}.')


def _read_idx(path, magic):
  with open(path, 'rb') as f:
    data = f.read()
  if data[:2] == b'\x1f\x8b':  # gzip's magic, whatever the file is called
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
      raise DataError(f'{path} is not a valid gzip file: {e}') from None
  header_size = 4 + 4 * (magic & 0xff)  # the magic's low byte is the number of dimensions
  if len(data) < header_size or int.from_bytes(data[:4], 'big') != magic:
    found = int.from_bytes(data[:4], 'big') if len(data) >= 4 else None
    raise DataError(f'{path} is not an IDX {"images" if magic == _IDX_IMAGES_MAGIC else "labels"}'
                    f' file: expected magic number {magic}, found {found} '
                    f'({len(data)} bytes).')
  shape = tuple(int.from_bytes(data[i:i + 4], 'big') for i in range(4, header_size, 4))
  expected = header_size + int(np.prod(shape))
  if len(data) != expected:
    raise DataError(f'{path} has {len(data)} bytes but its header (shape {shape}) needs '
                    f'{expected}: the file is truncated or corrupt.')
  return np.frombuffer(data, np.uint8, offset=header_size).reshape(shape)


def _tiny_imagenet_source(root, split):
  wnids_path = os.path.join(root, 'wnids.txt')
  if not os.path.isfile(wnids_path):
    raise DataError(f'{root!r} is not a tiny-imagenet-200 folder: it has no wnids.txt.')
  with open(wnids_path) as f:
    wnids = [line.strip() for line in f if line.strip()]
  label_of = {wnid: label for label, wnid in enumerate(wnids)}
  if split == 'train':
    paths, labels = _tiny_imagenet_train(root, wnids)
    # Stock order is class by class; mix it once so a bounded shuffle buffer suffices.
    order = np.random.default_rng(0).permutation(len(paths))
    paths, labels = [paths[i] for i in order], [labels[i] for i in order]
  else:
    paths, labels = _tiny_imagenet_validation(root, label_of)
  if not paths:
    raise DataError(f'Tiny-ImageNet folder {root!r} has no {split} images.')
  labels = np.array(labels, np.int64)
  image_shape = tuple(_decode_jpeg(paths[0]).shape)  # 64x64x3 in the stock set
  examples = tf.data.Dataset.from_tensor_slices((paths, labels))
  return _Source(examples=examples, decode=_decode_jpeg, num_classes=len(wnids),
                 image_shape=image_shape, labels=labels, num_examples=len(labels))


def _tiny_imagenet_train(root, wnids):
  paths, labels = [], []
  for label, wnid in enumerate(wnids):
    folder = os.path.join(root, 'train', wnid, 'images')
    if not os.path.isdir(folder):
      raise DataError(f'Tiny-ImageNet class {wnid} (wnids.txt) has no folder {folder}.')
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(_JPEG_SUFFIXES))
    paths += [os.path.join(folder, n) for n in names]
    labels += [label] * len(names)
  return paths, labels


def _tiny_imagenet_validation(root, label_of):
  annotations_path = os.path.join(root, 'val', 'val_annotations.txt')
  if not os.path.isfile(annotations_path):
    raise DataError(f'Tiny-ImageNet folder {root!r} has no val/val_annotations.txt.')
  paths, labels = [], []
  with open(annotations_path) as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      fields = line.rstrip('\n').split('\t')
      if len(fields) < 2 or fields[1] not in label_of:
        raise DataError(f'{annotations_path}:{line_number}: expected "filename<TAB>wnid..." '
                        f'with a wnid from wnids.txt, got {line.strip()!r}.')
      paths.append(os.path.join(root, 'val', 'images', fields[0]))
      labels.append(label_of[fields[1]])
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise DataError(f'{len(missing)} images named in {annotations_path} are missing, '
                    f'e.g. {missing[0]}.')
  return paths, labels


def _decode_jpeg(path):
  # channels=3 stacks grayscale JPEGs (a few hundred in Tiny-ImageNet) to RGB.
  return _uint8_to_unit(tf.io.decode_jpeg(tf.io.read_file(path), channels=3))


def _npz_source(path_pattern, split):
  path = path_pattern.replace('{split}', split)
  if not os.path.isfile(path):
    raise DataError(f'No .npz file {path!r} (split {split!r}).')
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {key: npz[key] for key in npz.files}
  except (OSError, ValueError, zlib.error) as e:
    raise DataError(f'Cannot read {path!r} as a .npz file: {e}') from None
  missing = [key for key in ('images', 'labels') if key not in arrays]
  if missing:
    raise DataError(f'{path} lacks {missing}; it has {sorted(arrays)}.')
  images, labels = arrays['images'], arrays['labels']
  if images.ndim == 3:
    images = images[..., np.newaxis]  # grayscale NHW
  if images.ndim != 4:
    raise DataError(f'{path}: images must be NHWC or NHW, got shape {images.shape}.')
  if images.dtype != np.uint8:
    if not np.issubdtype(images.dtype, np.floating):
      raise DataError(f'{path}: images must be uint8 (0..255) or float in [0, 1], got '
                      f'{images.dtype}.')
    if not (np.all(images >= 0) and np.all(images <= 1)):  # also catches NaN
      raise DataError(f'{path}: float images must lie in [0, 1], found values in '
                      f'[{images.min()}, {images.max()}]; store 0..255 pixels as uint8.')
    images = images.astype(np.float32)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f'{path}: labels must be a 1-D integer array, got {labels.dtype} '
                    f'{labels.shape}.')
  if len(images) != len(labels):
    raise DataError(f'{path} has {len(images)} images but {len(labels)} labels.')
  if not len(labels):
    raise DataError(f'{path} holds no examples.')
  if 'num_classes' in arrays:
    num_classes = int(arrays['num_classes'])
  else:
    num_classes = int(labels.max()) + 1
  if labels.min() < 0 or labels.max() >= num_classes:
    raise DataError(f'{path}: labels must lie in [0, {num_classes}), found '
                    f'[{labels.min()}, {labels.max()}].')
  return _in_memory_source(images, labels, num_classes)
