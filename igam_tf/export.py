r"""Exports a MadryLab TF1 checkpoint, or a model this project trained, as a SavedModel
that serves with no project code.

  python -m igam_tf.export --model=madry_cifar10 \
      --checkpoint=models/adv_trained --export_dir=/tmp/madry_cifar10
  python -m igam_tf.export --model=trained --model_dir=runs/igam --export_dir=/tmp/igam
  python -m igam_tf.export --model=trained --model_dir=runs/real_data/mnist_teacher \
      --format=madry_checkpoint --export_dir=models/mnist_teacher

--format=madry_checkpoint writes a trained madry_mnist or madry_resnet model as MadryLab's
TF1 code saves one (the original variable names): it loads wherever their release does
(--teacher=madry_mnist:DIR, --source=..., evaluate --checkpoint=..., their own code).

--checkpoint is a folder with a `checkpoint` index file (as in the release zips)
or a prefix such as models/adv_trained/checkpoint-70000. The architecture's
sizes (--num_classes, --filters, --units_per_stage) are read from the
checkpoint unless given. The SavedModel's signatures, `serving_default` and
`input_gradients`, are described in igam_tf/serving.py; inspect them with
`saved_model_cli show --dir EXPORT_DIR --all`.
"""

import json
import os
import sys

from absl import app
from absl import flags
import tensorflow as tf

from igam_tf import flag_groups
from igam_tf import model_io
from igam_tf import serving
import madry_models

MODELS = ('madry_mnist', 'madry_cifar10', 'trained')
FORMATS = ('saved_model', 'madry_checkpoint')


def define_flags():
  flags.DEFINE_enum('model', None, MODELS, 'The architecture the checkpoint holds, or '
                    '"trained" for a --model_dir written by this project\'s training.')
  flags.DEFINE_string('checkpoint', None, 'A TF1 checkpoint folder or prefix.')
  flags.DEFINE_string('model_dir', None, '--model=trained: the trained model\'s folder.')
  flags.DEFINE_string('export_dir', None, 'Where to write the SavedModel.')
  flags.DEFINE_integer('num_classes', None, 'Classes of the logit head. Unset: read from '
                       'the checkpoint.', lower_bound=2)
  flags.DEFINE_list('filters', None, 'madry_cifar10 only: widths of the first conv and the '
                    '3 stages, e.g. 16,160,320,640. Unset: read from the checkpoint.')
  flags.DEFINE_integer('units_per_stage', None, 'madry_cifar10 only: residual units per '
                       'stage. Unset: read from the checkpoint.', lower_bound=1)
  flags.DEFINE_bool('overwrite', False, 'Replace an existing non-empty --export_dir.')
  flags.DEFINE_enum('format', 'saved_model', FORMATS, 'saved_model: a SavedModel for serving; '
                    'madry_checkpoint (--model=trained, a madry_mnist or madry_resnet model): '
                    'a TF1 checkpoint in MadryLab\'s layout.')
  flags.mark_flags_as_required(['model', 'export_dir'])
  flags.register_validator('filters', lambda value: value is None or all(
      v.strip().isdigit() for v in value), message='--filters takes comma-separated integers')
  flags.register_multi_flags_validator(
      ['model', 'model_dir', 'checkpoint'],
      lambda f: f['model'] is None or bool(f['model_dir'] if f['model'] == 'trained'
                                           else f['checkpoint']),
      message='--model=trained needs --model_dir; --model=madry_* needs --checkpoint')


def load_model(model, checkpoint, num_classes=None, filters=None, units_per_stage=None):
  """Builds `model` (one of MODELS) and loads `checkpoint` into it.

  Sizes left as None are read from the checkpoint. Raises
  madry_models.CheckpointError if the checkpoint is missing or does not fit,
  ValueError for sizes the architecture cannot take.
  """
  if model == 'madry_mnist':
    if filters or units_per_stage:
      raise ValueError('--filters and --units_per_stage apply to madry_cifar10 only.')
    return madry_models.load_madry_mnist(checkpoint, num_classes=num_classes)
  return madry_models.load_madry_resnet(
      checkpoint, filters=filters, units_per_stage=units_per_stage, num_classes=num_classes)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  # Refuse before spending time on a large checkpoint.
  if os.path.exists(f.export_dir) and not os.path.isdir(f.export_dir):
    print(f'ERROR: --export_dir={f.export_dir} is a file, not a folder', file=sys.stderr)
    return 1
  if (not f.overwrite and tf.io.gfile.exists(f.export_dir)
      and tf.io.gfile.listdir(f.export_dir)):
    print(f'ERROR: --export_dir={f.export_dir} exists and is not empty; pass --overwrite '
          'to replace it.', file=sys.stderr)
    return 1
  try:  # the export is written beside --export_dir, then renamed into place
    flag_groups.check_writable('export_dir', f.export_dir,
                               os.path.dirname(os.path.abspath(f.export_dir)))
  except ValueError as e:
    print(f'ERROR: {e}', file=sys.stderr)
    return 1
  if f.format == 'madry_checkpoint':
    if f.model != 'trained':
      print(f'ERROR: --format=madry_checkpoint writes a model this project trained '
            f'(--model=trained); --model={f.model} is one already', file=sys.stderr)
      return 1
    return export_madry_checkpoint(f.model_dir, f.export_dir)
  if f.model == 'trained':
    return export_trained(f.model_dir, f.export_dir, f.overwrite)
  filters = tuple(int(v) for v in f.filters) if f.filters else None
  try:
    prefix = madry_models.resolve_checkpoint(f.checkpoint)
    model = load_model(f.model, prefix, f.num_classes, filters, f.units_per_stage)
  except madry_models.CheckpointError as e:
    print(f'ERROR: cannot load --checkpoint={f.checkpoint} as --model={f.model}: {e}',
          file=sys.stderr)
    return 1
  except ValueError as e:  # sizes the architecture cannot take
    print(f'ERROR: {e}', file=sys.stderr)
    return 1
  num_classes = serving.export_classifier(
      model, f.export_dir, type(model).input_image_shape, overwrite=f.overwrite)
  description = f'{f.model}, {num_classes} classes'
  if f.model == 'madry_cifar10':
    description += (f', filters {",".join(map(str, model.filters))}, '
                    f'{model.units_per_stage} units per stage')
  print(f'Loaded {prefix} ({description}).')
  print(f'Wrote a SavedModel to {f.export_dir} with signatures:')
  print(serving.describe_signatures(f.export_dir))
  return 0


def export_trained(model_dir, export_dir, overwrite):
  try:
    model, spec = model_io.load_model(model_dir)
  except model_io.ModelError as e:
    print(f'ERROR: cannot load --model_dir={model_dir}: {e}', file=sys.stderr)
    return 1
  num_classes = serving.export_classifier(model, export_dir, tuple(spec['image_shape']),
                                          overwrite=overwrite)
  print(f'Loaded {model_dir} ({spec.get("architecture", spec["kind"])}, {num_classes} classes).')
  print(f'Wrote a SavedModel to {export_dir} with signatures:')
  print(serving.describe_signatures(export_dir))
  return 0


def export_madry_checkpoint(model_dir, export_dir):
  try:
    model, spec = model_io.load_model(model_dir)
  except model_io.ModelError as e:
    print(f'ERROR: cannot load --model_dir={model_dir}: {e}', file=sys.stderr)
    return 1
  described = f'{spec.get("architecture", spec["kind"])}, {spec["num_classes"]} classes'
  try:
    prefix = madry_models.save_tf1_checkpoint(model, export_dir, _trained_steps(model_dir))
  except (TypeError, ValueError) as e:
    print(f'ERROR: --format=madry_checkpoint: --model_dir={model_dir} ({described}): {e}',
          file=sys.stderr)
    return 1
  print(f'Loaded {model_dir} ({described}).')
  print(f'Wrote a TF1 checkpoint in MadryLab\'s layout: {prefix}')
  return 0


def _trained_steps(model_dir):
  """The steps the run in `model_dir` trained for, as its run_config.json says (0 if
  it says nothing): the checkpoint's global_step."""
  try:
    with open(os.path.join(model_dir, 'run_config.json')) as f:
      return int(json.load(f).get('train_steps', 0))
  except (OSError, ValueError):
    return 0


def run():
  """`python -m igam_tf.export`, also the console script `igam-export`
  (pyproject.toml)."""
  flag_groups.run_binary(__name__, define_flags, main)


if __name__ == '__main__':
  run()
