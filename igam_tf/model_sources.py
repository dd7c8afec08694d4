"""Models named on the command line: every place a user's `madry_*:PATH`, folder or
SavedModel is read (`load` for attacks and gradient maps, `load_source` for a model to
finetune, `load_teacher` for IGAM's teacher).

A source is one of
  madry_mnist:PATH, madry_cifar10:PATH   a MadryLab TF1 checkpoint (folder or prefix)
  a trained model folder                 model.json and weights, written by training
  a SavedModel folder                    exported by igam_tf.export
  a folder holding saved_model/          e.g. the demo's per-model folders
A trained folder that also holds saved_model/ loads from model.json; both give the
same numbers (tests/test_evaluate.py checks it).

A SavedModel runs through its signatures alone, so it needs no project code: logits
from `serving_default`, gradients from `input_gradients`.
"""

import dataclasses
import os

import keras
import tensorflow as tf

import madry_models
from igam_tf import model_io
from igam_tf.teacher import Teacher

MADRY_KINDS = ('madry_mnist', 'madry_cifar10')
SAVED_MODEL_FILE, SAVED_MODEL_FOLDER = 'saved_model.pb', 'saved_model'


class ServedClassifier:
  """A SavedModel exported by igam_tf.export, as a callable images -> logits (what the
  attacks take) with its own `input_gradients(images, labels)`."""

  def __init__(self, export_dir):
    self.export_dir = export_dir
    self._loaded = tf.saved_model.load(export_dir)
    signatures = self._loaded.signatures
    if 'serving_default' not in signatures:
      raise model_io.ModelError(f'The SavedModel {export_dir!r} has no serving_default '
                                f'signature; export it with igam_tf.export')
    self._serve = signatures['serving_default']
    self._gradients = signatures.get('input_gradients')
    images_spec = self._serve.structured_input_signature[1].get('images')
    if images_spec is None or 'logits' not in self._serve.structured_outputs:
      raise model_io.ModelError(f'The SavedModel {export_dir!r} does not map images to '
                                f'logits; export it with igam_tf.export')
    self.image_shape = tuple(images_spec.shape[1:])

  def __call__(self, images):
    # Signatures take keyword arguments only.
    return self._serve(images=tf.cast(images, tf.float32))['logits']

  def input_gradients(self, images, labels):
    """d (summed cross-entropy) / d images, from the export's own signature."""
    if self._gradients is None:
      raise model_io.ModelError(f'The SavedModel {self.export_dir!r} has no input_gradients '
                                f'signature')
    return self._gradients(images=tf.cast(images, tf.float32),
                           labels=tf.cast(labels, tf.int64))['gradients']


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A loaded classifier.

  Attributes:
    name: what tables and grids call it (the folder's name unless given).
    source: the source it was loaded from.
    kind: 'trained', 'saved_model', 'madry_mnist' or 'madry_cifar10'.
    model: a Keras model or a `ServedClassifier`: images in [0, 1] -> logits.
    image_shape: (H, W, C) of the images it takes.
  """
  name: str
  source: str
  kind: str
  model: object
  image_shape: tuple


def _is_saved_model(folder):
  return os.path.isfile(os.path.join(folder, SAVED_MODEL_FILE))


def _holds_model(folder):
  return (os.path.isfile(os.path.join(folder, model_io.SPEC_FILE)) or _is_saved_model(folder)
          or _is_saved_model(os.path.join(folder, SAVED_MODEL_FOLDER)))


def _madry_checkpoint(source):
  """(kind, path) of a `madry_mnist:PATH` or `madry_cifar10:PATH` source, else (None, None)."""
  kind, _, path = source.partition(':')
  return (kind, path) if kind in MADRY_KINDS and path else (None, None)


def default_name(source):
  kind, _ = _madry_checkpoint(source)
  if kind:
    return kind
  return os.path.basename(os.path.normpath(source))


def load(source, name=None):
  """Loads a classifier from a source (see the module docstring).

  Raises:
    model_io.ModelError (a ValueError): a source that holds no model.
    madry_models.CheckpointError (a ValueError): a checkpoint that does not fit.
  """
  name = name or default_name(source)
  kind, _ = _madry_checkpoint(source)
  if kind:
    model, spec = load_source(source)
    return Classifier(name, source, kind, model, tuple(spec['image_shape']))
  if not os.path.isdir(source):
    raise model_io.ModelError(f'{source!r} is neither madry_mnist:PATH, madry_cifar10:PATH '
                              f'nor a folder')
  if os.path.isfile(os.path.join(source, model_io.SPEC_FILE)):
    model, spec = model_io.load_model(source)
    return Classifier(name, source, 'trained', model, tuple(spec['image_shape']))
  for folder in (source, os.path.join(source, SAVED_MODEL_FOLDER)):
    if _is_saved_model(folder):
      served = ServedClassifier(folder)
      return Classifier(name, source, 'saved_model', served, served.image_shape)
  raise model_io.ModelError(f'{source!r} holds no model: no {model_io.SPEC_FILE} (a trained '
                            f'model folder), {SAVED_MODEL_FILE} or {SAVED_MODEL_FOLDER}/')


def model_folders(folder):
  """{name: path}: `folder` itself if it holds a model, else each sub-folder that does,
  sorted by name."""
  if not os.path.isdir(folder):
    raise model_io.ModelError(f'{folder!r} is not a folder')
  if _holds_model(folder):
    return {default_name(folder): folder}
  found = {entry: os.path.join(folder, entry) for entry in sorted(os.listdir(folder))
           if os.path.isdir(os.path.join(folder, entry))
           and _holds_model(os.path.join(folder, entry))}
  if not found:
    raise model_io.ModelError(
        f'{folder!r} holds no model, and no sub-folder with {model_io.SPEC_FILE} or '
        f'{SAVED_MODEL_FOLDER}/')
  return found


def check_fits(classifier, image_shape, num_classes):
  """Raises ModelError unless `classifier` takes images of `image_shape` and predicts
  `num_classes` classes (a mismatch would give meaningless accuracies, not an error)."""
  image_shape = tuple(int(d) for d in image_shape)
  if tuple(int(d) for d in classifier.image_shape) != image_shape:
    raise model_io.ModelError(
        f'{classifier.name} takes images of shape {tuple(classifier.image_shape)}, but the '
        f'dataset gives {image_shape} (see --image_size)')
  model = classifier.model
  zeros = tf.zeros((1,) + image_shape)
  logits = model(zeros, training=False) if isinstance(model, keras.layers.Layer) else model(zeros)
  if int(logits.shape[-1]) != num_classes:
    raise model_io.ModelError(
        f'{classifier.name} predicts {int(logits.shape[-1])} classes, but the dataset (with '
        f'--classes) has {num_classes}')


def load_source(source, num_classes=None, filters=None, units_per_stage=None):
  """A source model named on the command line, as (model, classifier spec).

  `madry_mnist:PATH` or `madry_cifar10:PATH` load a MadryLab TF1 checkpoint (a
  folder or a prefix); anything else is a folder this project trained.
  """
  kind, path = _madry_checkpoint(source)
  if kind == 'madry_mnist':
    model = madry_models.load_madry_mnist(path, num_classes=num_classes)
    return model, model_io.classifier_spec('madry_mnist', model.num_classes,
                                           madry_models.MadryMNIST.input_image_shape)
  if kind == 'madry_cifar10':
    model = madry_models.load_madry_resnet(path, filters=filters,
                                           units_per_stage=units_per_stage,
                                           num_classes=num_classes)
    return model, model_io.classifier_spec('madry_resnet', model.num_classes,
                                           madry_models.MadryResNet.input_image_shape,
                                           filters=model.filters,
                                           units_per_stage=model.units_per_stage)
  if os.path.isdir(source):
    model, spec = model_io.load_model(source)
    if spec['kind'] != 'classifier':
      raise model_io.ModelError(f'{source} holds a finetuned {spec["kind"]}, not a '
                                f'classifier: give the model it was finetuned from')
    return model, spec
  raise model_io.ModelError(f'Source model {source!r} is neither madry_mnist:PATH, '
                            f'madry_cifar10:PATH nor a trained model folder')


def load_teacher(source, image_shape, transform='', batch_norm='moving'):
  """A finetuned teacher, as (Teacher, teacher spec), from either a folder written by
  finetune_teacher (which holds its transform) or a MadryLab-layout checkpoint whose
  logits were finetuned elsewhere, e.g. the IGAM authors' `target_task_logit` head
  (`madry_mnist:PATH` / `madry_cifar10:PATH`, with `transform` and the BN mode it was
  finetuned with, `batch_norm`, given here)."""
  if not _madry_checkpoint(source)[0]:
    if transform:
      raise model_io.ModelError(f'The teacher {source!r} holds its own input transform; '
                                f'leave --teacher_transform unset')
    teacher, spec = model_io.load_model(source)
    if spec['kind'] != 'teacher':
      raise model_io.ModelError(f'{source} holds a {spec["kind"]}, not a finetuned teacher: '
                                f'run igam_tf.finetune_teacher first')
    return teacher, spec
  classifier, classifier_spec_ = load_source(source)
  teacher = Teacher(classifier, classifier.num_classes, transform, batch_norm=batch_norm)
  teacher(keras.ops.zeros((1,) + tuple(image_shape)))
  teacher.head.set_weights(classifier.logits.get_weights())  # the finetuned head
  return teacher, model_io.teacher_spec(classifier_spec_, classifier.num_classes, transform,
                                        image_shape, batch_norm=batch_norm)
