"""Flag groups the training binaries share, and their conversion to settings.

Only binaries import this module (flags are defined under their `__main__`);
the converters take the parsed flag values as an argument and never read the
global FLAGS themselves. Flag values that make no sense (a negative rate or
weight, an epsilon outside [0, 1], one class) are refused when the flags are
parsed, before any work; `parse_flags` reports them as a one-line error.
"""

import functools
import os
import runpy
import sys
import tempfile

from absl import app
from absl import flags

import madry_models
from igam_tf import architectures
from igam_tf import attacks
from igam_tf import data
from igam_tf import distribution
from igam_tf import experiments
from igam_tf import model_io
from igam_tf import optimization
from igam_tf import teacher
from igam_tf import training


def _check_classes(classes):
  try:
    ids = [int(c) for c in classes]
  except ValueError:
    raise flags.ValidationError(f'--classes takes integer class ids, got '
                                f'{",".join(classes)}') from None
  if len(ids) == 1:
    raise flags.ValidationError('--classes names one class: a classifier needs at least '
                                'two (leave it unset for every class)')
  return True


def register_attack_names(name='attacks'):
  """Refuses, when the flags are parsed, an attack name the grammar does not know."""
  def check(names):
    for attack in names:
      try:
        attacks.parse_attack(attack)
      except ValueError as e:
        raise flags.ValidationError(f'--{name}: {e}') from None
    return True
  flags.register_validator(name, check)


def register_positive(name):
  """Refuses a value of flag `name` that is not above 0 (None passes: unset)."""
  flags.register_validator(name, lambda value: value is None or value > 0,
                           message=f'--{name} must be positive')


def define_data_flags(default_dataset='cifar10', default_batch_size=128):
  flags.DEFINE_string('dataset', default_dataset,
                      f'One of {data.VALID_SPECS} (see igam_tf/data.py).')
  flags.DEFINE_string('data_dir', None, 'Where TFDS datasets are prepared.')
  flags.DEFINE_list('classes', [], 'Keep only these class ids (at least two), relabelled '
                    '0..K-1.')
  flags.register_validator('classes', _check_classes)
  flags.DEFINE_integer('image_size', None, 'Resize images to this square size.')
  flags.DEFINE_enum('augment', 'none', ['none', 'madry'],
                    'madry: pad, random crop and horizontal flip (Madry CIFAR).')
  flags.DEFINE_float('pixel_noise', 0.0, 'Uniform pixel noise U(-a, a) on the [0, 1] scale '
                     '(the authors used 8/255 for CIFAR-10 -> CIFAR-100).',
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer('batch_size', default_batch_size, 'Global batch size.', lower_bound=1)
  flags.DEFINE_string('validation_split', 'test', 'Split evaluated at each checkpoint; '
                      'empty for none.')
  flags.DEFINE_integer('seed', 0, 'Seeds data order, augmentation and attacks.')


def define_strategy_flags():
  """--strategy and --cpu_replicas (read by `distribution.get_strategy`)."""
  flags.DEFINE_enum('strategy', 'default', distribution.STRATEGIES,
                    'default: one device; mirrored: all local GPUs (without GPUs, '
                    '--cpu_replicas logical CPUs), each batch split over them; '
                    'multi_worker_mirrored: several machines, refused for now (see README). '
                    'Results are those of one device with the same --batch_size.')
  flags.DEFINE_integer('cpu_replicas', 1, 'Split the host CPU into this many logical '
                       'devices, the replicas of --strategy=mirrored on a machine without '
                       'GPUs (to try the distributed path on a laptop or CI).', lower_bound=1)


def define_run_flags(default_steps=1000, default_checkpoint_every=100):
  flags.DEFINE_string('model_dir', None, 'Checkpoints, TensorBoard logs and the trained model '
                      'go here; a rerun with the same flags resumes.')
  flags.DEFINE_integer('train_steps', default_steps, 'Training steps.', lower_bound=1)
  flags.DEFINE_integer('checkpoint_every', default_checkpoint_every,
                       'Steps between checkpoints (train_steps must be a multiple).',
                       lower_bound=1)
  define_strategy_flags()
  flags.DEFINE_integer('summary_every', 50, 'Steps between TensorBoard scalars.',
                       lower_bound=1)
  flags.DEFINE_list('resume_with_changes', [], 'Settings (flag names) a rerun may change '
                    'when it resumes the run in --model_dir, e.g. learning_rate after a NaN '
                    'loss: the optimizers\' settings, the loss weights and train_steps, never '
                    'the architecture or the data. Each change is recorded in the folder\'s '
                    f'{training.RUN_HISTORY}.')
  flags.mark_flag_as_required('model_dir')
  flags.register_multi_flags_validator(
      ['train_steps', 'checkpoint_every'],
      lambda v: v['train_steps'] is None or v['checkpoint_every'] is None
      or v['train_steps'] % v['checkpoint_every'] == 0,
      message='--train_steps must be a multiple of --checkpoint_every')
  flags.register_validator('resume_with_changes', _check_resume_with_changes)


def _check_resume_with_changes(names):
  unknown = [name for name in names if name not in flags.FLAGS]
  if unknown:
    raise flags.ValidationError(
        f'--resume_with_changes names {", ".join(unknown)}, which '
        f'{"is not a flag" if len(unknown) == 1 else "are not flags"} of this binary: it '
        f'takes flag names without dashes, e.g. learning_rate,train_steps')
  try:
    training.check_resume_with_changes(names)
  except training.TrainingError as e:
    raise flags.ValidationError(str(e)) from None
  return True


def define_optimizer_flags(prefix='', optimizer=None, learning_rate=None,
                           weight_decay=2e-4, help_owner='the student'):
  """optimizer or learning_rate None: unset, the student architecture's own
  (`optimizer_settings`)."""
  unset = {'optimizer': '', 'learning_rate': ''}
  if optimizer is None:
    unset['optimizer'] = (' Unset: the student architecture\'s own, ' + ', '.join(
        f'{name} at {rate:g} for {architecture}'
        for architecture, (name, rate) in architectures.DEFAULT_TRAINING.items()) + '.')
  if learning_rate is None:
    unset['learning_rate'] = (
        ' Unset: the student architecture\'s own with its optimizer (see --optimizer), '
        'else ' + ', '.join(f'{rate:g} for {name}'
                            for name, rate in optimization.DEFAULT_LEARNING_RATES.items())
        + '.')
  flags.DEFINE_enum(f'{prefix}optimizer', optimizer, optimization.OPTIMIZERS,
                    f'Optimizer of {help_owner}.{unset["optimizer"]}')
  flags.DEFINE_float(f'{prefix}learning_rate', learning_rate,
                     f'Learning rate of {help_owner} (before any schedule).'
                     f'{unset["learning_rate"]}')
  register_positive(f'{prefix}learning_rate')
  flags.DEFINE_list(f'{prefix}lr_boundaries', [], f'Steps where the learning rate of '
                    f'{help_owner} changes, e.g. 40000,60000.')
  flags.DEFINE_list(f'{prefix}lr_values', [], 'The piecewise rates, one more than the '
                    'boundaries, e.g. 0.1,0.01,0.001.')
  flags.register_validator(f'{prefix}lr_values', _check_rates)
  flags.DEFINE_float(f'{prefix}momentum', 0.9, f'Momentum of {help_owner} (momentum only).')
  flags.DEFINE_float(f'{prefix}weight_decay', weight_decay,
                     f'L2 weight decay of {help_owner}\'s kernels.', lower_bound=0.0)


def _check_rates(values):
  try:
    rates = [float(v) for v in values]
  except ValueError:
    raise flags.ValidationError(f'learning rates must be numbers, got {",".join(values)}'
                                ) from None
  if any(not rate > 0 for rate in rates):
    raise flags.ValidationError('learning rates must be positive')
  return True


def define_student_flags(architecture='madry_resnet'):
  flags.DEFINE_enum('student_architecture', architecture, architectures.ARCHITECTURES,
                    'The student\'s architecture (any, whatever the teacher\'s).')
  flags.DEFINE_string('student_activation', None, 'Activation: the architecture\'s own when '
                      'unset; e.g. gelu, elu or softplus for useful second derivatives.')
  flags.DEFINE_list('student_filters', [], 'madry_resnet: 4 widths (16,160,320,640 is WRN '
                    '32-10); simple_cnn: layer widths. Unset: small defaults.')
  flags.DEFINE_integer('student_units_per_stage', 5, 'madry_resnet: residual units per stage.')
  flags.DEFINE_enum('student_input_normalization', None, list(madry_models.INPUT_NORMALIZATIONS),
                    'madry_resnet: standardize (Madry\'s per_image_standardization, when '
                    'unset) or mean_l2 (the IGAM authors\' student: subtract the image\'s '
                    'mean, scale to unit L2 norm).')


def define_teacher_bn_flag():
  flags.DEFINE_enum('teacher_bn', 'moving', teacher.TEACHER_BN, 'BN of the frozen teacher '
                    'while it is finetuned or teaches: moving (inference mode) or batch (the '
                    'batch\'s statistics, as the IGAM authors\' code).')


def data_settings(f):
  return experiments.DataSettings(
      dataset=f.dataset, data_dir=f.data_dir, classes=tuple(int(c) for c in f.classes),
      image_size=f.image_size, augment=f.augment, pixel_noise=f.pixel_noise,
      batch_size=f.batch_size, validation_split=f.validation_split, seed=f.seed)


def run_settings(f):
  check_writable('model_dir', f.model_dir)
  return experiments.RunSettings(model_dir=f.model_dir, train_steps=f.train_steps,
                                 checkpoint_every=f.checkpoint_every, strategy=f.strategy,
                                 cpu_replicas=f.cpu_replicas, summary_every=f.summary_every,
                                 resume_with_changes=tuple(f.resume_with_changes))


def optimizer_settings(f, prefix='', architecture=None):
  """An unset optimizer is `architecture`'s own (architectures.DEFAULT_TRAINING); an
  unset learning rate is the architecture's own with that optimizer, else the
  optimizer's (optimization.DEFAULT_LEARNING_RATES)."""
  value = lambda name: getattr(f, prefix + name)
  own_optimizer, own_rate = architectures.DEFAULT_TRAINING.get(architecture, (None, None))
  optimizer = value('optimizer') or own_optimizer
  learning_rate = value('learning_rate')
  if learning_rate is None:
    learning_rate = (own_rate if optimizer == own_optimizer
                     else optimization.DEFAULT_LEARNING_RATES[optimizer])
  return experiments.OptimizerSettings(
      optimizer=optimizer, learning_rate=learning_rate,
      lr_boundaries=tuple(int(b) for b in value('lr_boundaries')),
      lr_values=tuple(float(v) for v in value('lr_values')),
      momentum=value('momentum'), weight_decay=value('weight_decay'))


def student_spec(f):
  """Classes and image shape are filled in from the dataset by the training job."""
  return model_io.classifier_spec(
      f.student_architecture, activation=f.student_activation,
      filters=tuple(int(v) for v in f.student_filters) or None,
      units_per_stage=f.student_units_per_stage,
      input_normalization=f.student_input_normalization)


def check_writable(flag, value, folder=None):
  """Refuses, before any work, a --`flag`=`value` whose `folder` (the value itself by
  default) cannot be written: a file in the way, or a place where no file can be made.
  Creates nothing."""
  folder = os.path.abspath(folder or value)
  while not os.path.isdir(folder):
    if os.path.exists(folder):
      raise ValueError(f'--{flag}={value}: {folder} is a file, not a folder')
    folder = os.path.dirname(folder)
  try:
    with tempfile.TemporaryFile(dir=folder):
      pass
  except OSError as e:
    raise ValueError(f'--{flag}={value}: cannot write in {folder} ({e.strerror})') from None


def parse_flags(argv):
  """app.run's flag parser: a bad flag value ends the binary with a one-line error
  (absl's names the flag) before any work."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = '; '.join(line for line in str(e).splitlines() if line.strip())
    print(f'ERROR: {message}', file=sys.stderr)
    sys.exit(1)


def run_binary(module_name, define_flags, main):
  """Runs a binary: `python -m MODULE`, or its console script (pyproject.toml), which
  runs the module as `python -m` does so that --help lists the binary's own flags."""
  if module_name != '__main__':
    runpy.run_module(module_name, run_name='__main__', alter_sys=True)
    return
  define_flags()
  app.run(main, flags_parser=parse_flags)


def reports_errors(main):
  """Bad input (a flag, a file, a checkpoint) or a diverged run ends the binary with a
  one-line error instead of a traceback."""
  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except (ValueError, training.TrainingError) as e:
      print(f'ERROR: {e}', file=sys.stderr)
      return 1
    except OSError as e:  # a file or folder that cannot be read or written; it names it
      print(f'ERROR: {e.strerror}: {e.filename}' if e.filename else f'ERROR: {e}',
            file=sys.stderr)
      return 1
  return wrapped
