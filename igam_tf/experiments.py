"""One function per training job (teacher finetuning, IGAM, each baseline), each taking
its one settings object (igam_tf.settings): what the binaries run from their flags, and
what the demo runs in sequence.

Each job checks its data (at least one whole batch of two or more classes), builds
its models inside the distribution strategy's scope, trains with `training.train`
(checks the settings against those recorded in its model folder, records them once
training starts; checkpoints, resume, summaries, NaN stop) and saves the trained
model with `model_io.save_model` for export and evaluation.
"""

import functools
import json
import os

from absl import logging
import keras
import numpy as np

from igam_tf import baselines
from igam_tf import data
from igam_tf import distribution
from igam_tf import model_io
from igam_tf import model_sources
from igam_tf import multi_worker
from igam_tf import settings
from igam_tf import training
from igam_tf.discriminator import build_discriminator
from igam_tf.igam import IGAM
from igam_tf.teacher import Teacher


def load_training_data(data_settings):
  """Returns (train split, repeated training stream, validation batches or None).

  Seeds every random generator from `data_settings.seed` first, so a job's initial
  weights and data order are the same each time it starts (a resumed run skips the
  batches it has done)."""
  keras.utils.set_random_seed(data_settings.seed)
  classes = tuple(data_settings.classes or ())
  train_split = data.load_dataset(data_settings.dataset, 'train',
                                  data_dir=data_settings.data_dir,
                                  image_size=data_settings.image_size, classes=classes)
  _check_trainable(train_split, data_settings)
  # Each worker of a multi-worker run builds the whole stream and keeps its share.
  stream = distribution.shard_by_data(data.restartable(lambda: data.make_pipeline(
      train_split, data_settings.batch_size, training=True, augment=data_settings.augment,
      pixel_noise=data_settings.pixel_noise, seed=data_settings.seed).repeat()))
  validation = None
  if data_settings.validation_split:
    split = data.load_dataset(data_settings.dataset, data_settings.validation_split,
                              data_dir=data_settings.data_dir,
                              image_size=data_settings.image_size, classes=classes)
    validation = distribution.shard_by_data(
        data.make_pipeline(split, data_settings.batch_size, training=False))
  return train_split, stream, validation


def _check_trainable(train_split, data_settings):
  """Refuses a training split with fewer examples than one batch (the stream drops a
  last partial batch, so `fit` would run no step and save an untrained model) or with
  fewer than two classes."""
  described = f'The training split of {train_split.name}'
  if data_settings.classes:
    described += f' with --classes={",".join(str(c) for c in data_settings.classes)}'
  if train_split.num_classes < 2:
    raise data.DataError(f'{described} has only {train_split.num_classes} class: a '
                         f'classifier needs at least two (see --classes).')
  count = train_split.num_examples
  if count is None:  # a TFDS split filtered by classes: count up to one batch
    count = int(train_split.dataset.take(data_settings.batch_size).reduce(
        np.int64(0), lambda n, unused_example: n + 1))
  if count < data_settings.batch_size:
    raise data.DataError(
        f'{described} has {count} examples, fewer than one batch '
        f'(--batch_size={data_settings.batch_size}), so training would run no step: lower '
        f'--batch_size to at most {count}, or train on more data.')


def job_strategy(job):
  """The distribution strategy `job.run` names (made before any data is loaded: a CPU
  split into replicas must be set up before TensorFlow runs anything). The global batch
  must split evenly over its replicas (each replica's loss is divided by the global
  batch), and every worker of a multi-worker run must run the same job."""
  run, batch_size = job.run, job.data.batch_size
  devices = run.devices
  strategy = distribution.get_strategy(devices.strategy, devices.cpu_replicas)
  replicas = strategy.num_replicas_in_sync
  if batch_size % replicas:
    raise ValueError(f'--batch_size={batch_size} does not split evenly over the {replicas} '
                     f'replicas of --strategy={devices.strategy}: make it a multiple of '
                     f'{replicas} (it is the global batch, whatever the number of replicas)')
  if run.jit_compile and replicas > 1:
    # XLA then fails on variables placed on another replica's device
    # (xla/known_issues#tfvariable_on_a_different_device).
    raise ValueError(f'--jit_compile does not run under the {replicas} replicas of '
                     f'--strategy={devices.strategy} (XLA cannot use variables placed on '
                     f'another device): drop one of them')
  different = multi_worker.differing_on_workers(
      strategy, training.settings_by_flag(settings.recorded(job)))
  if different:  # each would train another model, and the chief save its own
    raise ValueError(f'The workers were started with different '
                     f'{", ".join("--" + name for name in different)}: start every worker '
                     f'with the same command (only TF_CONFIG differs)')
  return strategy


def _train(model, stream, validation, job, gradient_models):
  run = job.run
  return training.train(model, stream, model_dir=run.model_dir, total_steps=run.train_steps,
                        checkpoint_every=run.checkpoint_every, validation=validation,
                        gradient_models=gradient_models, summary_every=run.summary_every,
                        verbose=run.verbose, run_config=settings.recorded(job),
                        resume_with_changes=tuple(run.resume_with_changes))


def _save_model(model_dir, model, spec, strategy):
  """`model_io.save_model`, by every worker of a multi-worker run, the chief into
  `model_dir`; returns once it is there (the other workers may read it next)."""
  with multi_worker.writable_folder(model_dir, strategy) as folder:
    model_io.save_model(folder, model, spec)
  multi_worker.barrier(strategy)


def _in_precision(job_function):
  """Runs a job with the Keras dtype policy its --mixed_precision names (the models built
  under it compute in 16 bits and keep float32 weights), and float32 after."""
  @functools.wraps(job_function)
  def run(job):
    precision = job.run.mixed_precision
    keras.mixed_precision.set_global_policy('float32' if precision == 'none' else precision)
    try:
      return job_function(job)
    finally:
      keras.mixed_precision.set_global_policy('float32')
  return run


@_in_precision
def finetune_teacher(job):
  """Section 4.1: a new K-way head (and the transform's weights, if any) trained with
  Adam on the target task; every source weight frozen, its BN as `job.teacher_bn` says
  (see `teacher.Teacher`). `job` is a settings.FinetuneJob. Returns the teacher."""
  strategy = job_strategy(job)
  train_split, stream, validation = load_training_data(job.data)
  with strategy.scope():
    source_model, source_spec = model_sources.load_source(
        job.source, num_classes=job.source_num_classes)
    spec = model_io.teacher_spec(source_spec, train_split.num_classes, job.transform,
                                 train_split.image_shape, batch_norm=job.teacher_bn)
    teacher = Teacher(source_model, train_split.num_classes, job.transform,
                      batch_norm=job.teacher_bn)
    teacher(keras.ops.zeros((1,) + tuple(train_split.image_shape)))
    model = baselines.StandardTraining(teacher)
    model.compile(optimizer=keras.optimizers.Adam(job.learning_rate),
                  jit_compile=job.run.jit_compile)
    distribution.synchronize_batch_norm(model, strategy)
  _train(model, stream, validation, job, {'teacher': teacher})
  _save_model(job.run.model_dir, teacher, spec, strategy)
  return teacher


@_in_precision
def train_igam(job):
  """Section 4.2: trains a student with IGAM against a finetuned teacher: a folder
  written by `finetune_teacher`, or a MadryLab-layout checkpoint with a finetuned head
  plus `job.teacher_transform` (see `model_sources.load_teacher`). `job` is a
  settings.IGAMJob. Returns the student."""
  igam = job.igam
  strategy = job_strategy(job)
  train_split, stream, validation = load_training_data(job.data)
  student_spec = job.student.spec(train_split.num_classes, train_split.image_shape)
  with strategy.scope():
    teacher, teacher_spec = model_sources.load_teacher(job.teacher, train_split.image_shape,
                                                       job.teacher_transform, igam.teacher_bn)
    _check_same_task(teacher_spec, train_split, 'teacher')
    if igam.teacher_bn != teacher_spec.get('batch_norm', 'moving'):
      logging.warning('The teacher was finetuned with its BN in %r mode, IGAM runs it in %r '
                      '(--teacher_bn)', teacher_spec.get('batch_norm', 'moving'), igam.teacher_bn)
    teacher.batch_norm = igam.teacher_bn
    student = _build_student(student_spec, job.init_from, job.run.model_dir)
    model = IGAM(student, teacher, build_discriminator(igam.disc_blocks, igam.disc_filters),
                 gradient_window=teacher.transform.gradient_window(train_split.image_shape),
                 gradient_of=igam.gradient_of, adv_weight=igam.adv_weight,
                 diff_weight=igam.diff_weight, disc_every=igam.disc_every,
                 disc_update=igam.disc_update, diff_window=igam.diff_window,
                 igam_start_step=igam.igam_start_step, weight_decay=job.optimizer.weight_decay,
                 disc_weight_decay=igam.disc_optimizer.weight_decay,
                 double_backprop=igam.double_backprop,
                 finite_difference_step=igam.finite_difference_step)
    model.compile(job.optimizer.build(), igam.disc_optimizer.build(),
                  jit_compile=job.run.jit_compile)
    distribution.synchronize_batch_norm(model, strategy)
  _train(model, stream, validation, job, {'student': student, 'teacher': teacher})
  _save_model(job.run.model_dir, student, student_spec, strategy)
  return student


@_in_precision
def train_baseline(job):
  """Trains a baseline student, `job.method` 'standard', 'pgd_at' or 'grad_norm'
  ('finetune' is `finetune_teacher`). `job` is a settings.BaselineJob. Returns the
  trained classifier."""
  method, baseline = job.method, job.baseline
  if method not in settings.METHODS or method == 'finetune':
    raise ValueError(f'train_baseline runs standard, pgd_at or grad_norm, got {method!r} '
                     f'(finetune is finetune_teacher)')
  strategy = job_strategy(job)
  train_split, stream, validation = load_training_data(job.data)
  student_spec = job.student.spec(train_split.num_classes, train_split.image_shape)
  with strategy.scope():
    classifier = _build_student(student_spec, job.init_from, job.run.model_dir)
    common = dict(weight_decay=job.optimizer.weight_decay)
    if method == 'standard':
      model = baselines.StandardTraining(classifier, **common)
    elif method == 'pgd_at':
      model = baselines.PGDAdversarialTraining(
          classifier, epsilon=baseline.epsilon, step_size=baseline.pgd_step_size,
          steps=baseline.pgd_steps, seed=job.data.seed, pgd_bn=baseline.pgd_bn, **common)
    else:
      model = baselines.GradientNormPenalty(
          classifier, penalty_weight=baseline.penalty_weight,
          gradient_of=baseline.gradient_of, penalty_start_step=baseline.penalty_start_step,
          double_backprop=baseline.double_backprop,
          finite_difference_step=baseline.finite_difference_step, **common)
    model.compile(optimizer=job.optimizer.build(), jit_compile=job.run.jit_compile)
    distribution.synchronize_batch_norm(model, strategy)
  _train(model, stream, validation, job, {method: classifier})
  _save_model(job.run.model_dir, classifier, student_spec, strategy)
  return classifier


def _build_student(spec, init_from, model_dir):
  """A student of `spec`: fresh weights, or those of the trained student in the folder
  `init_from` (a shared warm-up), which must be of the same spec. Not read when the run
  resumes: its own checkpoint replaces them (and `init_from` may be gone)."""
  student = model_io.build_model(spec)
  if init_from and not training.has_checkpoints(model_dir):
    try:
      trained, trained_spec = model_io.load_model(init_from)
    except model_io.ModelError as e:
      raise model_io.ModelError(f'--init_from: {e}') from None
    if trained_spec['kind'] != 'classifier':
      raise model_io.ModelError(f'--init_from={init_from} holds a finetuned '
                                f'{trained_spec["kind"]}, not a student: give a run of '
                                f'train_baseline or train_igam')
    spec = json.loads(json.dumps(spec))  # as a spec comes back from disk
    differences = [f'{key} {trained_spec.get(key)!r} there, {spec.get(key)!r} here'
                   for key in sorted(set(spec) | set(trained_spec))
                   if trained_spec.get(key) != spec.get(key)]
    if differences:
      raise model_io.ModelError(f'--init_from={init_from} holds another model than this '
                                f'run\'s student: {"; ".join(differences)}')
    student.set_weights(trained.get_weights())
  return student


def _check_same_task(spec, train_split, role):
  if list(spec['image_shape']) != list(train_split.image_shape):
    raise ValueError(f'The {role} takes images of shape {tuple(spec["image_shape"])}, but '
                     f'{train_split.name} gives {train_split.image_shape} (see --image_size)')
  if spec['num_classes'] != train_split.num_classes:
    raise ValueError(f'The {role} has {spec["num_classes"]} classes, but {train_split.name} '
                     f'(with --classes) has {train_split.num_classes}')


def trained_model_exists(model_dir):
  return os.path.exists(os.path.join(model_dir, model_io.SPEC_FILE))
