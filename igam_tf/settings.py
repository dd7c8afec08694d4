"""What each training job is told: one settings object per job, nested by concern.

A job (`FinetuneJob`, and `IGAMJob` and `BaselineJob`, which share `StudentJob`) is a
dataclass of options and groups of options, each a `Settings` dataclass that checks its
values when made. Each option declares its command-line flag once, here: its help, choices
and bounds (`option`). A group's flags carry its prefix (`group`), so
`IGAMJob.optimizer.learning_rate` is --learning_rate,
`IGAMJob.igam.disc_optimizer.learning_rate` is --disc_learning_rate and
`IGAMJob.student.filters` is --student_filters. The binaries define their flags from
their job's class and build the job from the parsed values with one generic function
(`igam_tf.flag_groups`); the Python API builds the same objects directly. What a run
records in its folder (run_config.json) is `recorded(job)`: the job's dict.
"""

import dataclasses

import madry_models
from igam_tf import architectures
from igam_tf import baselines
from igam_tf import data
from igam_tf import distribution
from igam_tf import igam
from igam_tf import input_gradients
from igam_tf import model_io
from igam_tf import optimization
from igam_tf import teacher

METHODS = ('standard', 'pgd_at', 'finetune', 'grad_norm')
PRECISIONS = ('none', 'mixed_bfloat16', 'mixed_float16')
# The jobs float16 is for: the others take input gradients (double backpropagation, or
# PGD's attack gradients), which would need a loss scaling of their own under float16.
_FLOAT16_JOBS = 'standard training and teacher finetuning'


def option(default, help, *, choices=None, lower_bound=None, upper_bound=None, check=None,
           unset_help='', flag=True):  # pylint: disable=redefined-builtin
  """A setting and the flag that sets it.

  Args:
    default: the value when the flag is not given.
    help: the flag's help; `{owner}` is the group's owner (see `group`).
    choices: the values allowed (an enum flag).
    lower_bound, upper_bound: inclusive bounds of a number.
    check: value -> None, raising ValueError('must ...') for a value that makes no
      sense; run when the flags are parsed.
    unset_help: appended to the help where the default is None (what unset means).
    flag: False for a setting code fills in (never a flag).
  """
  return dataclasses.field(default=default, metadata=dict(
      help=help, choices=choices, lower_bound=lower_bound, upper_bound=upper_bound,
      check=check, unset_help=unset_help, flag=flag))


def group(settings_class, prefix='', owner='the student', **defaults):
  """A nested group of settings: its flags are `prefix` + its options' names, with these
  defaults; `owner` fills its help texts."""
  return dataclasses.field(default_factory=lambda: settings_class(**defaults),
                           metadata=dict(prefix=prefix, owner=owner))


class Settings:
  """A settings dataclass checks its options when made (as the flags are checked when
  parsed), so that the Python API refuses what the binaries refuse."""

  def __post_init__(self):
    for field in dataclasses.fields(self):
      meta, value = field.metadata, getattr(self, field.name)
      if not meta.get('flag') or value is None:
        continue
      where = f'{type(self).__name__}.{field.name}'
      if meta['choices'] and value not in meta['choices']:
        raise ValueError(f'{where} must be one of {", ".join(meta["choices"])}, got {value!r}')
      if meta['lower_bound'] is not None and value < meta['lower_bound']:
        raise ValueError(f'{where} must be at least {meta["lower_bound"]}, got {value!r}')
      if meta['upper_bound'] is not None and value > meta['upper_bound']:
        raise ValueError(f'{where} must be at most {meta["upper_bound"]}, got {value!r}')
      if meta['check']:
        try:
          meta['check'](value)
        except ValueError as e:
          raise ValueError(f'{where} {e}, got {value!r}') from None


def positive(value):
  if value is not None and not value > 0:
    raise ValueError('must be positive')


def all_positive(values):
  if any(not value > 0 for value in values):
    raise ValueError('takes positive learning rates')


def all_positive_widths(widths):
  if any(width < 1 for width in widths):
    raise ValueError('takes positive widths')


def no_single_class(classes):
  if len(classes) == 1:
    raise ValueError('names one class: a classifier needs at least two (leave it unset for '
                     'every class)')


@dataclasses.dataclass
class DataSettings(Settings):
  dataset: str = option('cifar10', f'One of {data.VALID_SPECS} (see igam_tf/data.py).')
  data_dir: str = option(None, 'Where TFDS datasets are prepared.')
  classes: tuple[int, ...] = option((), 'Keep only these class ids (at least two), '
                                    'relabelled 0..K-1.', check=no_single_class)
  image_size: int = option(None, 'Resize images to this square size.', check=positive)
  augment: str = option('none', 'madry: pad, random crop and horizontal flip (Madry CIFAR).',
                        choices=data.AUGMENTATIONS)
  pixel_noise: float = option(0.0, 'Uniform pixel noise U(-a, a) on the [0, 1] scale (the '
                              'authors used 8/255 for CIFAR-10 -> CIFAR-100).',
                              lower_bound=0.0, upper_bound=1.0)
  batch_size: int = option(128, 'Global batch size.', lower_bound=1)
  validation_split: str = option('test', 'Split evaluated at each checkpoint; empty for none.')
  seed: int = option(0, 'Seeds data order, augmentation and attacks.', lower_bound=0)


def _unset_optimizer_help():
  return (' Unset: the student architecture\'s own, ' + ', '.join(
      f'{name} at {rate:g} for {architecture}'
      for architecture, (name, rate) in architectures.DEFAULT_TRAINING.items()) + '.')


def _unset_learning_rate_help():
  return (' Unset: the student architecture\'s own with its optimizer (see --optimizer), '
          'else ' + ', '.join(f'{rate:g} for {name}'
                              for name, rate in optimization.DEFAULT_LEARNING_RATES.items())
          + '.')


@dataclasses.dataclass
class OptimizerSettings(Settings):
  """None for the optimizer or its rate: the student architecture's own (`resolved`)."""
  optimizer: str = option(None, 'Optimizer of {owner}.', choices=optimization.OPTIMIZERS,
                          unset_help=_unset_optimizer_help())
  learning_rate: float = option(None, 'Learning rate of {owner} (before any schedule).',
                                check=positive, unset_help=_unset_learning_rate_help())
  lr_boundaries: tuple[int, ...] = option((), 'Steps where the learning rate of {owner} '
                                          'changes, e.g. 40000,60000.')
  lr_values: tuple[float, ...] = option((), 'The piecewise rates, one more than the '
                                        'boundaries, e.g. 0.1,0.01,0.001.', check=all_positive)
  momentum: float = option(0.9, 'Momentum of {owner} (momentum only).', lower_bound=0.0,
                           upper_bound=1.0)
  weight_decay: float = option(2e-4, 'L2 weight decay of {owner}\'s kernels.', lower_bound=0.0)

  def resolved(self, architecture):
    """These settings with an unset optimizer `architecture`'s own
    (architectures.DEFAULT_TRAINING), and an unset learning rate the architecture's own
    with that optimizer, else the optimizer's (optimization.DEFAULT_LEARNING_RATES)."""
    if self.optimizer and self.learning_rate is not None:
      return self
    own_optimizer, own_rate = architectures.DEFAULT_TRAINING.get(architecture, (None, None))
    optimizer = self.optimizer or own_optimizer or 'momentum'
    learning_rate = self.learning_rate
    if learning_rate is None:
      learning_rate = (own_rate if optimizer == own_optimizer
                       else optimization.DEFAULT_LEARNING_RATES[optimizer])
    return dataclasses.replace(self, optimizer=optimizer, learning_rate=learning_rate)

  def build(self):
    return optimization.build_optimizer(self.optimizer, self.learning_rate, self.lr_boundaries,
                                        self.lr_values, self.momentum)


@dataclasses.dataclass
class DeviceSettings(Settings):
  """Where a job runs: one device, or the replicas of a tf.distribute strategy."""
  strategy: str = option('default', 'default: one device; mirrored: all local GPUs (without '
                         'GPUs, --cpu_replicas logical CPUs), each batch split over them; '
                         'multi_worker_mirrored: the workers the TF_CONFIG environment '
                         'variable names, the same command started on each (the chief alone '
                         'writes; --model_dir on a filesystem all of them see). Results are '
                         'those of one device with the same --batch_size.',
                         choices=distribution.STRATEGIES)
  cpu_replicas: int = option(1, 'Split the host CPU into this many logical devices, the '
                             'replicas of --strategy=mirrored on a machine without GPUs (to '
                             'try the distributed path on a laptop or CI).', lower_bound=1)


@dataclasses.dataclass
class RunSettings(Settings):
  model_dir: str = option(None, 'Checkpoints, TensorBoard logs and the trained model go here; '
                          'a rerun with the same flags resumes.')
  train_steps: int = option(1000, 'Training steps.', lower_bound=1)
  checkpoint_every: int = option(100, 'Steps between checkpoints (train_steps must be a '
                                 'multiple).', lower_bound=1)
  devices: DeviceSettings = group(DeviceSettings)
  summary_every: int = option(50, 'Steps between TensorBoard scalars.', lower_bound=1)
  # Settings (flag names) that may differ from those recorded in model_dir on resume.
  resume_with_changes: tuple[str, ...] = option(
      (), 'Settings (flag names) a rerun may change when it resumes the run in --model_dir, '
      'e.g. learning_rate after a NaN loss: the optimizers\' settings, the loss weights and '
      'train_steps, never the architecture or the data. Each change is recorded in the '
      'folder\'s run_history.json.')
  jit_compile: bool = option(False, 'Compile each training step with XLA '
                             '(tf.function(jit_compile=True)): the same results within float '
                             'tolerance, usually faster on GPUs.')
  mixed_precision: str = option(
      'none', 'Compute in 16-bit floats, keep the weights in float32 (Keras\'s mixed '
      'precision; logits and losses stay float32): mixed_bfloat16 (every job; bfloat16 has '
      'float32\'s range, so no loss scaling is needed) or mixed_float16 (dynamic loss '
      f'scaling; {_FLOAT16_JOBS} only: IGAM, grad_norm and PGD-AT take input gradients, '
      'which would need a scaling of their own). Recorded: a run resumes with the same.',
      choices=PRECISIONS)
  verbose: object = option('auto', 'Keras fit verbosity.', flag=False)


@dataclasses.dataclass
class StudentSettings(Settings):
  architecture: str = option('madry_resnet', 'The student\'s architecture (any, whatever the '
                             'teacher\'s).', choices=architectures.ARCHITECTURES)
  activation: str = option(None, 'Activation: the architecture\'s own when unset; e.g. gelu, '
                           'elu or softplus for useful second derivatives.')
  filters: tuple[int, ...] = option((), 'madry_resnet: 4 widths (16,160,320,640 is WRN '
                                    '32-10); simple_cnn: layer widths. Unset: small defaults.',
                                    check=all_positive_widths)
  units_per_stage: int = option(5, 'madry_resnet: residual units per stage.', check=positive)
  input_normalization: str = option(
      None, 'madry_resnet: standardize (Madry\'s per_image_standardization, when unset) or '
      'mean_l2 (the IGAM authors\' student: subtract the image\'s mean, scale to unit L2 '
      'norm).', choices=madry_models.INPUT_NORMALIZATIONS)

  def __post_init__(self):
    super().__post_init__()
    widths = {'madry_resnet': 4, 'madry_mnist': 0}.get(self.architecture)
    if self.filters and widths is not None and len(self.filters) != widths:
      raise ValueError(f'--student_filters: {self.architecture} takes '
                       + (f'{widths} widths' if widths else 'no widths (fixed ones): leave it '
                          'unset') + f', got {",".join(map(str, self.filters))}')
    if self.input_normalization and self.architecture != 'madry_resnet':
      raise ValueError(f'--student_input_normalization is for madry_resnet, not '
                       f'{self.architecture}: leave it unset')

  def spec(self, num_classes, image_shape):
    """The model spec (model_io) of this student for a task."""
    return model_io.classifier_spec(
        self.architecture, num_classes, image_shape, activation=self.activation,
        filters=self.filters or None, units_per_stage=self.units_per_stage,
        input_normalization=self.input_normalization)


_TEACHER_BN_HELP = ('BN of the frozen teacher while it is finetuned or teaches: moving '
                    '(inference mode) or batch (the batch\'s statistics, as the IGAM authors\' '
                    'code).')


_DOUBLE_BACKPROP_HELP = (
    'How the weight gradient of the terms on the student\'s input gradients is taken: exact '
    '(second-order autodiff, double backpropagation) or finite_difference (Finlay and Oberman '
    '2019: one more forward and backward pass, at the images moved along the terms\' '
    'gradient; see igam_tf/input_gradients.py).')
_FINITE_DIFFERENCE_STEP_HELP = ('With --double_backprop=finite_difference: the step, as the '
                                'RMS pixel change on the [0, 1] scale.')


@dataclasses.dataclass
class IGAMSettings(Settings):
  gradient_of: str = option('xent', 'xent: the paper\'s text; true_prob: the authors\' code.',
                            choices=input_gradients.GRADIENT_OF)
  adv_weight: float = option(1.0, 'Weight of L_adv (the paper\'s Table 5).', lower_bound=0.0)
  diff_weight: float = option(10.0, 'Weight of L_diff (the paper\'s Table 4), gradients on the '
                              '0..255 scale summed over the batch, as the authors\'.',
                              lower_bound=0.0)
  disc_every: int = option(1, 'One discriminator step per this many student steps.',
                           lower_bound=1)
  disc_update: str = option('accumulate', 'With --disc_every > 1: accumulate (the mean of '
                            'those steps\' gradients, applied once) or current_batch (the '
                            'authors\': one step on that step\'s batch).',
                            choices=igam.DISC_UPDATES)
  diff_window: str = option('crop', 'With a center_crop teacher transform: L_diff on the '
                            'cropped maps, as the discriminator (crop), or on the whole maps '
                            '(full).', choices=igam.DIFF_WINDOWS)
  igam_start_step: int = option(0, 'Cross-entropy-only steps before IGAM starts.',
                                lower_bound=0)
  teacher_bn: str = option('moving', _TEACHER_BN_HELP, choices=teacher.TEACHER_BN)
  disc_blocks: int = option(4, 'Discriminator conv blocks.', lower_bound=1)
  disc_filters: int = option(8, 'Filters of the first block (doubling each block).',
                             lower_bound=1)
  double_backprop: str = option('exact', _DOUBLE_BACKPROP_HELP,
                                choices=input_gradients.DOUBLE_BACKPROP)
  finite_difference_step: float = option(1e-3, _FINITE_DIFFERENCE_STEP_HELP, check=positive)
  disc_optimizer: OptimizerSettings = group(
      OptimizerSettings, 'disc_', 'the discriminator', optimizer='momentum', learning_rate=0.1,
      weight_decay=0.0)


@dataclasses.dataclass
class BaselineSettings(Settings):
  epsilon: float = option(8 / 255, 'pgd_at: L-inf radius on the [0, 1] scale.',
                          lower_bound=0.0, upper_bound=1.0)
  pgd_steps: int = option(7, 'pgd_at: PGD steps.', lower_bound=1)
  pgd_step_size: float = option(2 / 255, 'pgd_at: PGD step size.', check=positive)
  pgd_bn: str = option('moving', 'pgd_at: BN while the training attacks are crafted: moving '
                       '(inference mode) or batch (the batch\'s statistics, as Madry\'s code).',
                       choices=baselines.PGD_BN)
  penalty_weight: float = option(10.0, 'grad_norm: weight of ||J||^2 (as --diff_weight of '
                                 'train_igam).', lower_bound=0.0)
  gradient_of: str = option('xent', 'grad_norm: J of what.', choices=input_gradients.GRADIENT_OF)
  penalty_start_step: int = option(0, 'grad_norm: cross-entropy-only steps before the penalty '
                                   'starts (IGAM\'s --igam_start_step, for a control on IGAM\'s '
                                   'schedule).', lower_bound=0)
  double_backprop: str = option('exact', 'grad_norm: ' + _DOUBLE_BACKPROP_HELP,
                                choices=input_gradients.DOUBLE_BACKPROP)
  finite_difference_step: float = option(1e-3, 'grad_norm: ' + _FINITE_DIFFERENCE_STEP_HELP,
                                         check=positive)


def _init_from():
  return option('', 'A trained student\'s folder (a finished run of train_baseline or '
                'train_igam, e.g. a cross-entropy run to the step where IGAM starts): the '
                'student starts from its weights instead of random ones (same architecture '
                'and task); this run counts its steps from 0. See the README, "Sharing a '
                'warm-up".')


@dataclasses.dataclass
class FinetuneJob(Settings):
  """Section 4.1 (igam_tf.finetune_teacher): a new head on a frozen source model."""
  source: str = option(None, 'madry_mnist:PATH, madry_cifar10:PATH (a TF1 checkpoint folder '
                       'or prefix) or a model folder this project trained.')
  transform: str = option('', 'Input transform from target images to the source\'s input, '
                          'e.g. channel_average,center_crop:28 (see igam_tf/transforms.py).')
  learning_rate: float = option(1e-3, 'Adam learning rate of the new head.', check=positive)
  source_num_classes: int = option(None, 'Classes of a Madry source checkpoint\'s head; '
                                   'unset: read from the checkpoint.')
  teacher_bn: str = option('moving', _TEACHER_BN_HELP, choices=teacher.TEACHER_BN)
  data: DataSettings = group(DataSettings, batch_size=64)
  run: RunSettings = group(RunSettings, train_steps=4700, checkpoint_every=470)

  def __post_init__(self):
    super().__post_init__()
    if self.learning_rate is None:  # train_baseline --method=finetune without a rate
      self.learning_rate = 1e-3


@dataclasses.dataclass(kw_only=True)
class StudentJob(Settings):
  """What a job that trains a student has, after its own options (keyword-only)."""
  student: StudentSettings = group(StudentSettings, 'student_')
  init_from: str = _init_from()
  optimizer: OptimizerSettings = group(OptimizerSettings)
  data: DataSettings = group(DataSettings)
  run: RunSettings = group(RunSettings)

  def input_gradients_taken_by(self):
    """What of the job takes input gradients (refused under float16), or None."""
    raise NotImplementedError

  def __post_init__(self):
    super().__post_init__()
    self.optimizer = self.optimizer.resolved(self.student.architecture)
    job = self.input_gradients_taken_by()
    if job and self.run.mixed_precision == 'mixed_float16':
      raise ValueError(f'--mixed_precision=mixed_float16 is for {_FLOAT16_JOBS}; {job} takes '
                       f'input gradients, which float16 would need to scale on their own '
                       f'(not done): use --mixed_precision=mixed_bfloat16')


@dataclasses.dataclass
class IGAMJob(StudentJob):
  """Section 4.2 (igam_tf.train_igam): a student trained with IGAM from a teacher."""
  teacher: str = option(None, 'A finetuned teacher folder (igam_tf.finetune_teacher), or '
                        'madry_mnist:PATH / madry_cifar10:PATH: a MadryLab-layout TF1 '
                        'checkpoint whose head was finetuned elsewhere (e.g. the IGAM authors\' '
                        'target_task_logit teachers).')
  teacher_transform: str = option('', 'With a checkpoint --teacher only: the input transform '
                                  'from target images to its input, e.g. '
                                  'channel_average,center_crop:28 (a teacher folder holds its '
                                  'own).')
  igam: IGAMSettings = group(IGAMSettings)

  def input_gradients_taken_by(self):
    return 'IGAM'


@dataclasses.dataclass
class BaselineJob(StudentJob):
  """A baseline student (igam_tf.train_baseline): standard, pgd_at or grad_norm."""
  method: str = option(None, 'The baseline.', choices=METHODS)
  baseline: BaselineSettings = group(BaselineSettings)

  def input_gradients_taken_by(self):
    return f'--method={self.method}' if self.method in ('pgd_at', 'grad_norm') else None


def by_flag(settings):
  """{flag name: value} of a settings object's options, its groups' included."""
  values = {}
  for field in dataclasses.fields(settings):
    value = getattr(settings, field.name)
    if 'prefix' in field.metadata:
      values.update({field.metadata['prefix'] + name: inner
                     for name, inner in by_flag(value).items()})
    elif field.metadata.get('flag'):
      values[field.name] = value
  return values


def recorded(job):
  """What run_config.json records of a job: its dict, less where its files go and how it
  is run (a resumed run may move, change strategy or XLA), but with its length and
  precision (which change the result)."""
  settings = dataclasses.asdict(job)
  run = settings.pop('run')
  return settings | {name: run[name] for name in
                     ('train_steps', 'checkpoint_every', 'mixed_precision')}
