"""Datasets stored in files: MNIST-format IDX files, a Tiny-ImageNet folder, a .npz.

Each reader checks its files and returns plain arrays (or JPEG paths) and labels, or
raises DataError naming the file and what is wrong with it; `igam_tf.data` turns them
into datasets.
"""

import gzip
import os
import zlib

import numpy as np

_IDX_IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension
_IDX_PREFIXES = {'train': 'train', 'test': 't10k'}
TINY_IMAGENET_SPLITS = {'train': 'train', 'validation': 'validation', 'test': 'validation'}
_JPEG_SUFFIXES = ('.jpeg', '.jpg')


class DataError(ValueError):
  """A dataset spec, split or file that cannot be loaded; the message says why."""


def read_idx(folder, split):
  """(uint8 images NHWC, labels, number of classes) of an IDX split ('train' or 'test')."""
  prefix = _IDX_PREFIXES[split]
  images = _read_idx(_find_idx_file(folder, f'{prefix}-images-idx3-ubyte'), _IDX_IMAGES_MAGIC)
  labels_path = _find_idx_file(folder, f'{prefix}-labels-idx1-ubyte')
  labels = _read_idx(labels_path, _IDX_LABELS_MAGIC)
  if len(images) != len(labels):
    raise DataError(f'{labels_path} has {len(labels)} labels but its images file has '
                    f'{len(images)} images.')
  # At least 10 classes, so that a split missing the top digit still has 10.
  num_classes = max(10, int(labels.max(initial=0)) + 1)
  return images[..., np.newaxis], labels, num_classes


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


def read_tiny_imagenet(root, split):
  """(JPEG paths, int64 labels, number of classes) of a stock tiny-imagenet-200 split
  ('train' or 'validation')."""
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
  return paths, np.array(labels, np.int64), len(wnids)


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


def read_npz(path_pattern, split):
  """(images NHWC, uint8 or float32 in [0, 1], labels, number of classes) of a .npz."""
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
  return images, labels, num_classes
