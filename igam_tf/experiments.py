"""One function per training job (teacher finetuning, IGAM, each baseline): what the
binaries run from their flags, and what the demo runs in sequence.

Each job checks its data (at least one whole batch of two or more classes), builds
its models inside the distribution strategy's scope, trains with `training.train`
(checks the settings against those recorded in its model folder, records them once
training starts; checkpoints, resume, summaries, NaN stop) and saves the trained
model with `model_io.save_model` for export and evaluation.
"""

import dataclasses
import os

from absl import logging
import keras
import numpy as np

from igam_tf import baselines
from igam_tf import data
from igam_tf import distribution
from igam_tf import model_io
from igam_tf import model_sources
from igam_tf import optimization
from igam_tf import training
from igam_tf.discriminator import build_discriminator
from igam_tf.igam import IGAM
from igam_tf.teacher import Teacher

METHODS = ('standard', 'pgd_at', 'finetune', 'grad_norm')


@dataclasses.dataclass
class DataSettings:
  dataset: str
  data_dir: str = None
  classes: tuple = ()
  image_size: int = None
  augment: str = 'none'
  pixel_noise: float = 0.0
  batch_size: int = 64
  validation_split: str = 'test'  # '' for none
  seed: int = 0


@dataclasses.dataclass
class OptimizerSettings:
  optimizer: str = 'momentum'
  learning_rate: float = 0.1
  lr_boundaries: tuple = ()
  lr_values: tuple = ()
  momentum: float = 0.9
  weight_decay: float = 2e-4

  def build(self):
    return optimization.build_optimizer(self.optimizer, self.learning_rate, self.lr_boundaries,
                                        self.lr_values, self.momentum)


@dataclasses.dataclass
class RunSettings:
  model_dir: str
  train_steps: int
  checkpoint_every: int = 1000
  strategy: str = 'default'
  # mirrored without GPUs: split the host CPU into this many replicas.
  cpu_replicas: int = 1
  summary_every: int = 50
  verbose: object = 'auto'
  # Settings (flag names) that may differ from those recorded in model_dir on resume.
  resume_with_changes: tuple = ()


@dataclasses.dataclass
class IGAMSettings:
  gradient_of: str = 'xent'
  adv_weight: float = 1.0
  diff_weight: float = 10.0
  disc_every: int = 1
  disc_update: str = 'accumulate'
  diff_window: str = 'crop'
  igam_start_step: int = 0
  teacher_bn: str = 'moving'
  disc_blocks: int = 4
  disc_filters: int = 8
  disc_optimizer: OptimizerSettings = dataclasses.field(
      default_factory=lambda: OptimizerSettings(weight_decay=0.0))


@dataclasses.dataclass
class BaselineSettings:
  epsilon: float = 8 / 255  # pgd_at
  pgd_steps: int = 7
  pgd_step_size: float = 2 / 255
  pgd_bn: str = 'moving'
  penalty_weight: float = 10.0  # grad_norm
  gradient_of: str = 'xent'
  penalty_start_step: int = 0


def load_training_data(settings):
  """Returns (train split, repeated training stream, validation batches or None).

  Seeds every random generator from `settings.seed` first, so a job's initial weights
  and data order are the same each time it starts (a resumed run skips the batches it
  has done)."""
  keras.utils.set_random_seed(settings.seed)
  classes = tuple(settings.classes or ())
  train_split = data.load_dataset(settings.dataset, 'train', data_dir=settings.data_dir,
                                  image_size=settings.image_size, classes=classes)
  _check_trainable(train_split, settings)
  stream = data.restartable(lambda: data.make_pipeline(
      train_split, settings.batch_size, training=True, augment=settings.augment,
      pixel_noise=settings.pixel_noise, seed=settings.seed).repeat())
  validation = None
  if settings.validation_split:
    split = data.load_dataset(settings.dataset, settings.validation_split,
                              data_dir=settings.data_dir, image_size=settings.image_size,
                              classes=classes)
    validation = data.make_pipeline(split, settings.batch_size, training=False)
  return train_split, stream, validation


def _check_trainable(train_split, settings):
  """Refuses a training split with fewer examples than one batch (the stream drops a
  last partial batch, so `fit` would run no step and save an untrained model) or with
  fewer than two classes."""
  described = f'The training split of {train_split.name}'
  if settings.classes:
    described += f' with --classes={",".join(str(c) for c in settings.classes)}'
  if train_split.num_classes < 2:
    raise data.DataError(f'{described} has only {train_split.num_classes} class: a '
                         f'classifier needs at least two (see --classes).')
  count = train_split.num_examples
  if count is None:  # a TFDS split filtered by classes: count up to one batch
    count = int(train_split.dataset.take(settings.batch_size).reduce(
        np.int64(0), lambda n, unused_example: n + 1))
  if count < settings.batch_size:
    raise data.DataError(
        f'{described} has {count} examples, fewer than one batch '
        f'(--batch_size={settings.batch_size}), so training would run no step: lower '
        f'--batch_size to at most {count}, or train on more data.')


def job_strategy(run, batch_size):
  """The distribution strategy `run` names (made before any data is loaded: a CPU split
  into replicas must be set up before TensorFlow runs anything). The global batch must
  split evenly over its replicas (each replica's loss is divided by the global batch)."""
  strategy = distribution.get_strategy(run.strategy, run.cpu_replicas)
  replicas = strategy.num_replicas_in_sync
  if batch_size % replicas:
    raise ValueError(f'--batch_size={batch_size} does not split evenly over the {replicas} '
                     f'replicas of --strategy={run.strategy}: make it a multiple of '
                     f'{replicas} (it is the global batch, whatever the number of replicas)')
  return strategy


def _run(model, stream, validation, run, config, gradient_models):
  return training.train(model, stream, model_dir=run.model_dir, total_steps=run.train_steps,
                        checkpoint_every=run.checkpoint_every, validation=validation,
                        gradient_models=gradient_models, summary_every=run.summary_every,
                        verbose=run.verbose, run_config=config,
                        resume_with_changes=tuple(run.resume_with_changes))


def _config(**settings):
  return {name: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
          for name, value in settings.items() if name != 'run'} | {
              'train_steps': settings['run'].train_steps,
              'checkpoint_every': settings['run'].checkpoint_every}


def finetune_teacher(source, transform, data_settings, run, learning_rate=1e-3,
                     source_num_classes=None, teacher_bn='moving'):
  """Section 4.1: a new K-way head (and the transform's weights, if any) trained with
  Adam on the target task; every source weight frozen, its BN as `teacher_bn` says
  (see `teacher.Teacher`). Returns the teacher."""
  strategy = job_strategy(run, data_settings.batch_size)
  train_split, stream, validation = load_training_data(data_settings)
  with strategy.scope():
    source_model, source_spec = model_sources.load_source(source, num_classes=source_num_classes)
    spec = model_io.teacher_spec(source_spec, train_split.num_classes, transform,
                                 train_split.image_shape, batch_norm=teacher_bn)
    teacher = Teacher(source_model, train_split.num_classes, transform, batch_norm=teacher_bn)
    teacher(keras.ops.zeros((1,) + tuple(train_split.image_shape)))
    model = baselines.StandardTraining(teacher)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    distribution.synchronize_batch_norm(model, strategy)
  _run(model, stream, validation, run,
       _config(source=source, transform=transform, data=data_settings, run=run,
               learning_rate=learning_rate, teacher_bn=teacher_bn), {'teacher': teacher})
  model_io.save_model(run.model_dir, teacher, spec)
  return teacher


def train_igam(student_spec, teacher, data_settings, optimizer, igam, run, teacher_transform=''):
  """Section 4.2: trains a student of `student_spec` with IGAM against a finetuned
  teacher: a folder written by `finetune_teacher`, or a MadryLab-layout checkpoint
  with a finetuned head plus `teacher_transform` (see `model_sources.load_teacher`).
  Returns the student."""
  strategy = job_strategy(run, data_settings.batch_size)
  train_split, stream, validation = load_training_data(data_settings)
  student_spec = _fit_to_task(student_spec, train_split, 'student')
  with strategy.scope():
    teacher_source = teacher
    teacher, teacher_spec = model_sources.load_teacher(teacher_source, train_split.image_shape,
                                                  teacher_transform, igam.teacher_bn)
    _check_same_task(teacher_spec, train_split, 'teacher')
    if igam.teacher_bn != teacher_spec.get('batch_norm', 'moving'):
      logging.warning('The teacher was finetuned with its BN in %r mode, IGAM runs it in %r '
                      '(--teacher_bn)', teacher_spec.get('batch_norm', 'moving'), igam.teacher_bn)
    teacher.batch_norm = igam.teacher_bn
    student = model_io.build_model(student_spec)
    model = IGAM(student, teacher, build_discriminator(igam.disc_blocks, igam.disc_filters),
                 gradient_window=teacher.transform.gradient_window(train_split.image_shape),
                 gradient_of=igam.gradient_of, adv_weight=igam.adv_weight,
                 diff_weight=igam.diff_weight, disc_every=igam.disc_every,
                 disc_update=igam.disc_update, diff_window=igam.diff_window,
                 igam_start_step=igam.igam_start_step, weight_decay=optimizer.weight_decay,
                 disc_weight_decay=igam.disc_optimizer.weight_decay)
    model.compile(optimizer.build(), igam.disc_optimizer.build())
    distribution.synchronize_batch_norm(model, strategy)
  _run(model, stream, validation, run,
       _config(student=student_spec, teacher=teacher_source,
               teacher_transform=teacher_transform, data=data_settings, optimizer=optimizer,
               igam=igam, run=run),
       {'student': student, 'teacher': teacher})
  model_io.save_model(run.model_dir, student, student_spec)
  return student


def train_baseline(method, student_spec, data_settings, optimizer, baseline, run):
  """Trains a baseline student: 'standard', 'pgd_at' or 'grad_norm'. ('finetune' is
  `finetune_teacher`.) Returns the trained classifier."""
  if method not in METHODS or method == 'finetune':
    raise ValueError(f'train_baseline runs standard, pgd_at or grad_norm, got {method!r} '
                     f'(finetune is finetune_teacher)')
  strategy = job_strategy(run, data_settings.batch_size)
  train_split, stream, validation = load_training_data(data_settings)
  student_spec = _fit_to_task(student_spec, train_split, 'student')
  with strategy.scope():
    classifier = model_io.build_model(student_spec)
    common = dict(weight_decay=optimizer.weight_decay)
    if method == 'standard':
      model = baselines.StandardTraining(classifier, **common)
    elif method == 'pgd_at':
      model = baselines.PGDAdversarialTraining(
          classifier, epsilon=baseline.epsilon, step_size=baseline.pgd_step_size,
          steps=baseline.pgd_steps, seed=data_settings.seed, pgd_bn=baseline.pgd_bn, **common)
    else:
      model = baselines.GradientNormPenalty(
          classifier, penalty_weight=baseline.penalty_weight,
          gradient_of=baseline.gradient_of, penalty_start_step=baseline.penalty_start_step,
          **common)
    model.compile(optimizer=optimizer.build())
    distribution.synchronize_batch_norm(model, strategy)
  _run(model, stream, validation, run,
       _config(method=method, student=student_spec, data=data_settings, optimizer=optimizer,
               baseline=baseline, run=run), {method: classifier})
  model_io.save_model(run.model_dir, classifier, student_spec)
  return classifier


def _fit_to_task(spec, train_split, role):
  """Fills in the spec's classes and image shape from the data, or checks them."""
  spec = dict(spec)
  spec['num_classes'] = spec['num_classes'] or train_split.num_classes
  spec['image_shape'] = spec['image_shape'] or list(train_split.image_shape)
  _check_same_task(spec, train_split, role)
  return spec


def _check_same_task(spec, train_split, role):
  if list(spec['image_shape']) != list(train_split.image_shape):
    raise ValueError(f'The {role} takes images of shape {tuple(spec["image_shape"])}, but '
                     f'{train_split.name} gives {train_split.image_shape} (see --image_size)')
  if spec['num_classes'] != train_split.num_classes:
    raise ValueError(f'The {role} has {spec["num_classes"]} classes, but {train_split.name} '
                     f'(with --classes) has {train_split.num_classes}')


def trained_model_exists(model_dir):
  return os.path.exists(os.path.join(model_dir, model_io.SPEC_FILE))
