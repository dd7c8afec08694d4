"""The training loop every binary shares: checkpoints, resume, summaries, NaN stop.

Training is counted in steps, like the authors' (320k steps). Keras "epochs" are
checkpoint intervals: `fit` runs `checkpoint_every` steps per epoch and a
checkpoint is written at the end of each, so a restarted run resumes from the
newest one and loses at most one interval. TensorFlow writes a checkpoint's files
before it points the `checkpoint` index at them, so a run killed mid-write
leaves the previous checkpoint in force; a checkpoint damaged later (corrupt,
truncated or missing files) is skipped, with a warning, for the newest one that
restores.

A run's settings are recorded in `run_config.json` once every check has passed,
right before its first step; a rerun must match them, except for the optimizer
settings, loss weights and length it names in `resume_with_changes`, each change
of which goes to `run_history.json`.
"""

import json
import math
import os
import re

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from igam_tf import multi_worker
from igam_tf.input_gradients import input_gradients

CHECKPOINTS, LOGS = 'checkpoints', 'logs'
RUN_CONFIG, RUN_HISTORY = 'run_config.json', 'run_history.json'

# Settings (by flag name) that a run may resume with changed, when named in
# --resume_with_changes: the optimizers' hyperparameters, the loss weights and the
# run's length. Every other setting changes the model's architecture, its data or
# what the job does, which a checkpoint cannot carry over.
CHANGEABLE_ON_RESUME = frozenset(
    [prefix + name for prefix in ('', 'disc_')
     for name in ('learning_rate', 'lr_boundaries', 'lr_values', 'momentum', 'weight_decay')]
    + ['adv_weight', 'diff_weight', 'penalty_weight', 'train_steps'])
# Settings that define the model's architecture or its data (named as such when refused).
MODEL_OR_DATA_SETTINGS = frozenset([
    'student_architecture', 'student_activation', 'student_filters', 'student_units_per_stage',
    'student_input_normalization', 'student_num_classes', 'student_image_shape', 'dataset',
    'data_dir', 'classes', 'image_size', 'augment', 'pixel_noise', 'batch_size',
    'validation_split', 'seed', 'source', 'source_num_classes', 'transform', 'teacher',
    'teacher_transform', 'teacher_bn', 'disc_blocks', 'disc_filters', 'init_from'])
# Where nested settings of a recorded run come from: {settings name: flag prefix}.
_FLAG_PREFIXES = {'data': '', 'optimizer': '', 'baseline': '', 'igam': '',
                  'disc_optimizer': 'disc_', 'student': 'student_'}


class TrainingError(RuntimeError):
  """Training cannot go on: the loss diverged, or the run does not match its folder."""


def check_resume_with_changes(names):
  """Raises TrainingError unless every name is a setting a run may resume with changed."""
  bad = sorted(set(names) - CHANGEABLE_ON_RESUME)
  if not bad:
    return
  model_or_data = [name for name in bad if name in MODEL_OR_DATA_SETTINGS]
  other = [name for name in bad if name not in MODEL_OR_DATA_SETTINGS]
  reasons = []
  if model_or_data:
    reasons.append(f'{", ".join(model_or_data)} '
                   f'{"changes" if len(model_or_data) == 1 else "change"} the model\'s '
                   f'architecture or its data, which its checkpoint cannot carry over')
  if other:
    reasons.append(f'{", ".join(other)} cannot change on resume'
                   + (' either' if model_or_data else ''))
  raise TrainingError(
      f'--resume_with_changes: {"; ".join(reasons)} (train them in another --model_dir). '
      f'It takes only {", ".join(sorted(CHANGEABLE_ON_RESUME))}.')


def settings_by_flag(config):
  """A recorded run's settings as {flag name: value} (nested settings flattened)."""
  flat = {}
  def visit(settings, prefix):
    for key, value in settings.items():
      if isinstance(value, dict) and key in _FLAG_PREFIXES:
        visit(value, prefix + _FLAG_PREFIXES[key])
      else:
        flat[prefix + key] = value
  visit(config, '')
  return flat


def _as_json(value):
  return json.loads(json.dumps(value))  # tuples -> lists, as they come back from disk


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise TrainingError(f'Cannot read {path} ({e}); move it aside to resume') from None


def _write_json(path, value):
  with open(path + '.partial', 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(path + '.partial', path)


def check_run_config(model_dir, config, resume_with_changes=()):
  """Compares the run's settings with those recorded in `model_dir`, writing nothing.

  A restart must use the recorded settings, so that a resumed checkpoint is not
  silently trained on with other ones, except for those named in
  `resume_with_changes` (see CHANGEABLE_ON_RESUME). Returns the allowed changes as
  [(flag name, recorded value, new value)]; raises TrainingError for any other.
  """
  check_resume_with_changes(resume_with_changes)
  path = os.path.join(model_dir, RUN_CONFIG)
  if not os.path.exists(path):
    return []
  saved, config = settings_by_flag(_read_json(path)), settings_by_flag(_as_json(config))
  changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
  if not changed:
    return []
  listing = '; '.join(f'{k}: {saved.get(k)!r} there, {config.get(k)!r} now' for k in changed)
  fixed = [k for k in changed if k not in CHANGEABLE_ON_RESUME]
  if fixed:
    raise TrainingError(
        f'{model_dir} holds a run with other settings, so it cannot be resumed with these: '
        f'{listing}. {", ".join(fixed)} cannot change on resume (they change the model\'s '
        f'architecture, its data or the job): use another --model_dir, or the same flags.')
  unlisted = [k for k in changed if k not in resume_with_changes]
  if unlisted:
    raise TrainingError(
        f'{model_dir} holds a run with other settings, so it cannot be resumed with these: '
        f'{listing}. To resume with the new values deliberately, add '
        f'--resume_with_changes={",".join(changed)} (each change is recorded in '
        f'{RUN_HISTORY}); or use another --model_dir, or the same flags.')
  for prefix in ('', 'disc_'):
    boundaries = prefix + 'lr_boundaries'
    if boundaries in changed and bool(saved.get(boundaries)) != bool(config.get(boundaries)):
      raise TrainingError(
          f'--{boundaries}: {model_dir} was trained with '
          f'{"a schedule" if saved.get(boundaries) else "a constant learning rate"}, and '
          f'switching between a constant rate and a schedule changes the optimizer\'s saved '
          f'state, so the run cannot resume with it: keep its kind of learning rate, or use '
          f'another --model_dir.')
  return [(k, saved.get(k), config.get(k)) for k in changed]


def record_run_config(model_dir, config, changes=(), step=0):
  """Records the run's settings in `model_dir`, and each change made on resume (step,
  setting, old and new value) in its run history."""
  os.makedirs(model_dir, exist_ok=True)
  if changes:
    history_path = os.path.join(model_dir, RUN_HISTORY)
    history = _read_json(history_path) if os.path.exists(history_path) else []
    history += [{'step': int(step), 'setting': name, 'old': old, 'new': new}
                for name, old, new in changes]
    _write_json(history_path, history)
  _write_json(os.path.join(model_dir, RUN_CONFIG), _as_json(config))


class _CheckpointEveryEpoch(keras.callbacks.Callback):
  """Saves at each epoch's end unless the loss went NaN in it."""

  def __init__(self, manager, nan_guard, last_saved=None):
    super().__init__()
    self.manager, self.nan_guard, self.last_saved = manager, nan_guard, last_saved

  def on_epoch_end(self, epoch, logs=None):
    if self.nan_guard.bad_step is None:
      self.last_saved = self.manager.save(
          checkpoint_number=int(self.model.optimizer.iterations.numpy()))


class _StopOnNaN(keras.callbacks.Callback):
  """Stops at the end of the call of the training function (see `train`) whose metrics
  are not finite: they are means since the epoch began, so one bad step shows."""

  def __init__(self):
    super().__init__()
    self.bad_step = None

  def on_train_begin(self, logs=None):
    self.finite_until = int(self.model.optimizer.iterations.numpy())

  def on_train_batch_end(self, batch, logs=None):
    step = int(self.model.optimizer.iterations.numpy())
    bad = {k: v for k, v in (logs or {}).items() if not np.all(np.isfinite(v))}
    if bad and self.bad_step is None:
      self.bad_step = step
      # The call's steps: the first bad one is among them.
      first = self.finite_until + 1
      self.bad_steps = f'step {step}' if first == step else f'steps {first}-{step}'
      self.bad_metrics = sorted(bad)
      self.model.stop_training = True
    self.finite_until = step


class _Summaries(keras.callbacks.Callback):
  """Scalars of every logged metric, at the optimizer's step (so resumed runs line
  up), and at each checkpoint, images of the input gradients on a fixed batch."""

  def __init__(self, log_dir, every, gradient_models, images, labels):
    super().__init__()
    self.writer = tf.summary.create_file_writer(log_dir)
    self.every, self.gradient_models = every, gradient_models
    self.images, self.labels = images, labels

  def _step(self):
    return int(self.model.optimizer.iterations.numpy())

  def on_train_batch_end(self, batch, logs=None):
    step = self._step()
    if step % self.every == 0:
      with self.writer.as_default(step=step):
        for name, value in (logs or {}).items():
          tf.summary.scalar(f'train/{name}', float(value))

  def on_epoch_end(self, epoch, logs=None):
    with self.writer.as_default(step=self._step()):
      for name, value in (logs or {}).items():
        if name.startswith('val_'):
          tf.summary.scalar(f'validation/{name[4:]}', float(value))
      if self.images is not None:
        tf.summary.image('images', self.images, max_outputs=8)
        for name, model in self.gradient_models.items():
          gradients, _ = input_gradients(lambda x: model(x, training=False),
                                         tf.constant(self.images), tf.constant(self.labels))
          tf.summary.image(f'input_gradients/{name}', gradients_for_display(gradients),
                           max_outputs=8)
    self.writer.flush()


def gradients_for_display(gradients):
  """Scales each gradient map to [0, 1] (0.5 = zero), as the paper's figures do."""
  scale = tf.reduce_max(tf.abs(gradients), axis=[1, 2, 3], keepdims=True) + 1e-12
  return 0.5 + 0.5 * gradients / scale


def _optimizers_of(model):
  """model.optimizer, then any other optimizer the model holds (IGAM's discriminator's)."""
  found = [model.optimizer]
  for value in vars(model).values():
    if isinstance(value, keras.optimizers.Optimizer) and all(value is not o for o in found):
      found.append(value)
  return found


def _checkpoints_newest_first(manager, directory):
  """The checkpoints in `directory`: those its `checkpoint` state file lists, and any
  ckpt-<step> beside them (a damaged state file lists none), newest first."""
  steps = {}
  for path in manager.checkpoints:
    match = re.search(r'-(\d+)$', path)
    steps[os.path.normpath(path)] = int(match.group(1)) if match else -1
  if os.path.isdir(directory):
    for name in os.listdir(directory):
      match = re.fullmatch(r'ckpt-(\d+)\.index', name)
      if match:
        steps.setdefault(os.path.normpath(os.path.join(directory, name[:-len('.index')])),
                         int(match.group(1)))
  return sorted(steps, key=lambda path: steps[path], reverse=True)


def has_checkpoints(model_dir):
  """Whether `model_dir` holds a checkpoint a run would resume from (or try to)."""
  directory = os.path.join(model_dir, CHECKPOINTS)
  return os.path.isdir(directory) and any(re.fullmatch(r'ckpt-\d+\.index', name)
                                          for name in os.listdir(directory))


def _only_a_failed_start(model_dir):
  """Whether `model_dir` holds no more than a run that never reached its first
  checkpoint leaves (its settings, history and logs), when it has no checkpoint."""
  if not os.path.isdir(model_dir):
    return True
  return not set(os.listdir(model_dir)) - {RUN_CONFIG, RUN_HISTORY, LOGS, CHECKPOINTS}


def _why(error):
  """An exception's message on one line, cut short."""
  text = ' '.join(str(error).split()) or type(error).__name__
  return text if len(text) <= 200 else text[:197] + '...'


def _restore_newest_good(checkpoint, candidates, directory, optimizers):
  """Restores the newest of `candidates` that restores whole, logging each skipped one
  and why; returns its path, or None when there are none. The optimizers keep their
  configured learning rates (a checkpoint holds the rate it was trained with)."""
  rates = [(v, v.numpy()) for optimizer in optimizers for v in optimizer.variables
           if v.name == 'learning_rate']
  skipped = []
  for path in candidates:
    try:
      checkpoint.restore(path).assert_consumed()
    except (tf.errors.OpError, AssertionError, ValueError, IndexError, OSError) as e:
      # Damaged (corrupt, truncated or emptied .index or .data files, missing files) or
      # not this model's.
      skipped.append(f'{os.path.basename(path)}: {_why(e)}')
      logging.warning('Skipped checkpoint %s: it does not restore (%s)', path, _why(e))
      continue
    for variable, value in rates:
      variable.assign(value)
    if skipped:
      logging.warning('Resuming from %s, the newest checkpoint that restores', path)
    return path
  if skipped:
    raise TrainingError(f'No checkpoint in {directory} restores, so the run cannot resume: '
                        + '; '.join(skipped) + '. Move the folder aside to train afresh.')
  return None


def train(model, dataset, *, model_dir, total_steps, checkpoint_every, validation=None,
          gradient_models=None, summary_every=50, verbose='auto', run_config=None,
          resume_with_changes=()):
  """Fits a compiled `model` for `total_steps` steps, resuming from `model_dir`.

  Every check runs before anything is written to `model_dir`.

  Args:
    model: a compiled keras.Model (its `optimizer.iterations` counts the steps). Its
      weights and the state of every optimizer it holds are checkpointed.
    dataset: the training stream of (images, labels) batches, repeated forever and
      deterministic, so that skipping the steps already done resumes it exactly.
    model_dir: checkpoints go to `model_dir/checkpoints`, TensorBoard logs to
      `model_dir/logs`.
    total_steps, checkpoint_every: the run's length and checkpoint interval, in steps.
    validation: an optional finite dataset evaluated at every checkpoint.
    gradient_models: {name: classifier} whose input gradients on a validation batch
      go to TensorBoard as images.
    run_config: the run's settings (JSON-able). When given, a resumed run must match
      those recorded in `model_dir` (see `check_run_config`; `resume_with_changes`
      names the settings it may change), and they are recorded right before the first
      step (with any change in the run history).

  Returns the Keras History of this call (empty when already finished).
  Raises TrainingError when the loss goes NaN (the last good checkpoint stays), when
  the settings do not match the folder's, or when no checkpoint in it restores. The
  newest checkpoint that restores is resumed; damaged newer ones are skipped (logged).
  """
  if total_steps % checkpoint_every:
    raise TrainingError(f'total steps ({total_steps}) must be a multiple of the checkpoint '
                        f'interval ({checkpoint_every})')
  check_resume_with_changes(resume_with_changes)
  images_shape = dataset.element_spec[0].shape
  # Variables are made in the strategy the model was built under (its replicas').
  with model.distribute_strategy.scope():
    if not model.built:
      model.build(images_shape)
    if not model.optimizer.built:
      model.optimizer.build(model.trainable_variables)
    # Flat lists of every variable: TF's object-graph tracking misses variables that Keras
    # keeps in plain Python lists (e.g. the BN statistics of MadryResNet's units).
    optimizers = _optimizers_of(model)
    checkpoint = tf.train.Checkpoint(
        weights=list(model.weights),
        optimizers=[list(optimizer.variables) for optimizer in optimizers])
  directory = os.path.join(model_dir, CHECKPOINTS)
  manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=3)
  candidates = _checkpoints_newest_first(manager, directory)
  changes = []
  if run_config is not None:
    if candidates or not _only_a_failed_start(model_dir):
      changes = check_run_config(model_dir, run_config, resume_with_changes)
    elif os.path.exists(os.path.join(model_dir, RUN_CONFIG)):
      logging.warning('%s holds no checkpoint to resume, so its recorded settings are '
                      'replaced by this run\'s', model_dir)
  restored = _restore_newest_good(checkpoint, candidates, directory, optimizers)
  if restored:
    logging.info('Resumed from %s', restored)
  done = int(model.optimizer.iterations.numpy())
  strategy = model.distribute_strategy
  if multi_worker.is_multi_worker(strategy):  # each must have read the chief's checkpoint
    steps = sorted(set(multi_worker.numbers_on_every_replica(strategy, [done])[:, 0]))
    if len(steps) > 1:
      raise TrainingError(
          f'The workers resumed {model_dir} at different steps '
          f'({", ".join(map(str, steps))}): --model_dir must be a folder every worker sees '
          f'(a shared filesystem), at the same path on each')
  if done >= total_steps:
    logging.info('%s already trained for %d steps', model_dir, done)
    return keras.callbacks.History()

  images = labels = None
  if validation is not None:
    images, labels = next(iter(validation.take(1)))
    images, labels = images.numpy()[:8], labels.numpy()[:8]
  if run_config is not None and multi_worker.is_chief(strategy):  # the run starts
    record_run_config(model_dir, run_config, changes, step=done)
    for name, old, new in changes:
      logging.warning('Resuming at step %d with %s changed from %r to %r (recorded in %s)',
                      done, name, old, new, os.path.join(model_dir, RUN_HISTORY))
  # Several steps per call of the training function (Keras's steps_per_execution): the
  # host reads the metrics (NaN stop, summaries) between calls only. Every step the host
  # acts at (a summary, a checkpoint, the start of a method's terms) ends a call. One step
  # per call under several replicas: Keras 3's multi-step loop fails under
  # MirroredStrategy ("You must feed a value for placeholder tensor",
  # keras-team/keras#19246).
  steps_per_call = 1
  if model.distribute_strategy.num_replicas_in_sync == 1:
    steps_per_call = math.gcd(summary_every, checkpoint_every,
                              getattr(model, 'terms_start_step', 0))
  if model.steps_per_execution != steps_per_call:
    model.steps_per_execution, model.train_function = steps_per_call, None
  nan_guard = _StopOnNaN()
  # Every worker of a multi-worker run saves; only the chief into model_dir.
  with multi_worker.writable_folder(model_dir, strategy) as output_dir:
    if output_dir != model_dir:
      manager = tf.train.CheckpointManager(checkpoint, os.path.join(output_dir, CHECKPOINTS),
                                           max_to_keep=1)
    saver = _CheckpointEveryEpoch(manager, nan_guard, last_saved=restored)
    callbacks = [nan_guard, saver,
                 _Summaries(os.path.join(output_dir, LOGS), summary_every,
                            gradient_models or {}, images, labels)]
    history = model.fit(dataset.skip(done), epochs=total_steps // checkpoint_every,
                        initial_epoch=done // checkpoint_every,
                        steps_per_epoch=checkpoint_every, validation_data=validation,
                        callbacks=callbacks, verbose=verbose,
                        shuffle=False)  # the stream is shuffled by the data pipeline
  if nan_guard.bad_step is not None:
    if saver.last_saved or not _only_a_failed_start(model_dir):
      advice = ('rerun with --resume_with_changes naming them (e.g. '
                '--resume_with_changes=learning_rate) to resume')
    else:  # nothing to resume: a rerun with other settings starts afresh
      advice = 'rerun to train afresh'
    raise TrainingError(
        f'The loss became NaN or infinite in {nan_guard.bad_steps} '
        f'({", ".join(nan_guard.bad_metrics)}); training stopped and the last good checkpoint '
        f'({saver.last_saved or "none yet"}) is kept. Lower the learning rate or the loss '
        f'weights, then {advice}.')
  return history
