"""Saving and loading the models this project trains (igam_tf.model_sources reads
the models a user names: MadryLab checkpoints, trained folders, SavedModels).

A trained model folder holds `model.json` (how to build the model: a spec) and
`model.weights.h5`. Specs are plain dicts:
  {"kind": "classifier", "architecture": ..., "num_classes": ..., "image_shape": ...,
   "activation": ..., "filters": ..., "units_per_stage": ...}
  {"kind": "teacher", "source": <classifier spec>, "num_classes": ...,
   "transform": "channel_average,center_crop:28", "image_shape": ...}
"""

import json
import os

import keras

from igam_tf.architectures import build_classifier
from igam_tf.teacher import Teacher

SPEC_FILE, WEIGHTS_FILE = 'model.json', 'model.weights.h5'


class ModelError(ValueError):
  """A model folder or source that cannot be used as asked."""


def classifier_spec(architecture, num_classes=None, image_shape=None, activation=None,
                    filters=None, units_per_stage=5, input_normalization=None):
  """num_classes and image_shape may be left None for a training job to fill in from
  its dataset."""
  return {'kind': 'classifier', 'architecture': architecture,
          'num_classes': int(num_classes) if num_classes else None,
          'image_shape': [int(d) for d in image_shape] if image_shape else None,
          'activation': activation,
          'filters': [int(f) for f in filters] if filters else None,
          'units_per_stage': int(units_per_stage),
          'input_normalization': input_normalization}


def teacher_spec(source_spec, num_classes, transform, image_shape, batch_norm='moving'):
  return {'kind': 'teacher', 'source': source_spec, 'num_classes': int(num_classes),
          'transform': transform or '', 'image_shape': [int(d) for d in image_shape],
          'batch_norm': batch_norm}


def build_model(spec):
  """Builds a model with fresh weights from its spec."""
  if spec['kind'] == 'classifier':
    return build_classifier(spec['architecture'], spec['num_classes'], spec['image_shape'],
                            activation=spec['activation'], filters=spec['filters'],
                            units_per_stage=spec['units_per_stage'],
                            input_normalization=spec.get('input_normalization'))
  if spec['kind'] == 'teacher':
    teacher = Teacher(build_model(spec['source']), spec['num_classes'], spec['transform'],
                      batch_norm=spec.get('batch_norm', 'moving'))
    teacher(keras.ops.zeros([1] + spec['image_shape']))
    return teacher
  raise ModelError(f'Unknown model kind {spec["kind"]!r} in a model spec')


def save_model(model_dir, model, spec):
  """Writes spec and weights; each file appears whole (written aside, then renamed)."""
  os.makedirs(model_dir, exist_ok=True)
  weights = os.path.join(model_dir, WEIGHTS_FILE)
  model.save_weights(weights + '.partial.weights.h5')
  os.replace(weights + '.partial.weights.h5', weights)
  with open(os.path.join(model_dir, SPEC_FILE + '.partial'), 'w') as f:
    json.dump(spec, f, indent=2)
  os.replace(os.path.join(model_dir, SPEC_FILE + '.partial'), os.path.join(model_dir, SPEC_FILE))


def load_model(model_dir):
  """Returns (model, spec) of a folder written by `save_model`."""
  spec_path = os.path.join(model_dir, SPEC_FILE)
  if not os.path.exists(spec_path):
    raise ModelError(f'{model_dir!r} is not a trained model folder: it has no {SPEC_FILE} '
                     f'(training writes it when it finishes)')
  try:
    with open(spec_path) as f:
      spec = json.load(f)
    model = build_model(spec)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ModelError(f'{spec_path} is not a model spec this project wrote ({_reason(e)}); '
                     f'train the model again, or restore the file') from None
  try:
    model.load_weights(os.path.join(model_dir, WEIGHTS_FILE))
  except (ValueError, OSError, FileNotFoundError) as e:
    raise ModelError(f'Cannot load the weights in {model_dir!r}: {e}') from e
  return model, spec


def _reason(error):
  return f'no {error}' if isinstance(error, KeyError) else str(error).splitlines()[0]
