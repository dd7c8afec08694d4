"""The training loop every binary shares: checkpoints, resume, summaries, NaN stop.

Training is counted in steps, like the authors' (320k steps). Keras "epochs" are
checkpoint intervals: `fit` runs `checkpoint_every` steps per epoch and a
checkpoint is written at the end of each, so a restarted run resumes from the
newest one and loses at most one interval. TensorFlow writes a checkpoint's files
before it points the `checkpoint` index at them, so a run killed mid-write
leaves the previous checkpoint in force.
"""

import json
import os

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from igam_tf.input_gradients import input_gradients

CHECKPOINTS, LOGS, RUN_CONFIG = 'checkpoints', 'logs', 'run_config.json'


class TrainingError(RuntimeError):
  """Training cannot go on: the loss diverged, or the run does not match its folder."""


def check_run_config(model_dir, config):
  """Records the run's settings in `model_dir`; a restart must use the same ones, so
  that a resumed checkpoint is not silently trained on with other settings."""
  os.makedirs(model_dir, exist_ok=True)
  path = os.path.join(model_dir, RUN_CONFIG)
  config = json.loads(json.dumps(config))  # tuples -> lists, as they come back from disk
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    changed = {k: (saved.get(k), config.get(k)) for k in set(saved) | set(config)
               if saved.get(k) != config.get(k)}
    if changed:
      raise TrainingError(
          f'{model_dir} holds a run with other settings, so it cannot be resumed with these: '
          + '; '.join(f'{k}: {old!r} there, {new!r} now' for k, (old, new) in sorted(changed.items()))
          + '. Use another --model_dir, or the same flags.')
    return
  with open(path + '.partial', 'w') as f:
    json.dump(config, f, indent=2, sort_keys=True)
  os.replace(path + '.partial', path)


class _CheckpointEveryEpoch(keras.callbacks.Callback):
  """Saves at each epoch's end unless the loss went NaN in it."""

  def __init__(self, manager, nan_guard):
    super().__init__()
    self.manager, self.nan_guard = manager, nan_guard

  def on_epoch_end(self, epoch, logs=None):
    if self.nan_guard.bad_step is None:
      self.manager.save(checkpoint_number=int(self.model.optimizer.iterations.numpy()))


class _StopOnNaN(keras.callbacks.Callback):

  def __init__(self):
    super().__init__()
    self.bad_step = None

  def on_train_batch_end(self, batch, logs=None):
    bad = {k: v for k, v in (logs or {}).items() if not np.all(np.isfinite(v))}
    if bad and self.bad_step is None:
      self.bad_step = int(self.model.optimizer.iterations.numpy())
      self.bad_metrics = sorted(bad)
      self.model.stop_training = True


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


def train(model, dataset, *, model_dir, total_steps, checkpoint_every, validation=None,
          gradient_models=None, summary_every=50, verbose='auto'):
  """Fits a compiled `model` for `total_steps` steps, resuming from `model_dir`.

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

  Returns the Keras History of this call (empty when already finished).
  Raises TrainingError when the loss goes NaN; the last good checkpoint stays.
  """
  if total_steps % checkpoint_every:
    raise TrainingError(f'total steps ({total_steps}) must be a multiple of the checkpoint '
                        f'interval ({checkpoint_every})')
  images_shape = dataset.element_spec[0].shape
  if not model.built:
    model.build(images_shape)
  if not model.optimizer.built:
    model.optimizer.build(model.trainable_variables)
  # Flat lists of every variable: TF's object-graph tracking misses variables that Keras
  # keeps in plain Python lists (e.g. the BN statistics of MadryResNet's units).
  checkpoint = tf.train.Checkpoint(
      weights=list(model.weights),
      optimizers=[list(optimizer.variables) for optimizer in _optimizers_of(model)])
  manager = tf.train.CheckpointManager(checkpoint, os.path.join(model_dir, CHECKPOINTS),
                                       max_to_keep=3)
  if manager.latest_checkpoint:
    try:
      checkpoint.restore(manager.latest_checkpoint).assert_consumed()
    except (AssertionError, ValueError) as e:
      raise TrainingError(f'{manager.latest_checkpoint} does not fit this model, so the run '
                          f'cannot resume: {e}') from e
    logging.info('Resumed from %s', manager.latest_checkpoint)
  done = int(model.optimizer.iterations.numpy())
  if done >= total_steps:
    logging.info('%s already trained for %d steps', model_dir, done)
    return keras.callbacks.History()

  images = labels = None
  if validation is not None:
    images, labels = next(iter(validation.take(1)))
    images, labels = images.numpy()[:8], labels.numpy()[:8]
  nan_guard = _StopOnNaN()
  callbacks = [nan_guard, _CheckpointEveryEpoch(manager, nan_guard),
               _Summaries(os.path.join(model_dir, LOGS), summary_every,
                          gradient_models or {}, images, labels)]
  history = model.fit(dataset.skip(done), epochs=total_steps // checkpoint_every,
                      initial_epoch=done // checkpoint_every, steps_per_epoch=checkpoint_every,
                      validation_data=validation, callbacks=callbacks, verbose=verbose,
                      shuffle=False)  # the stream is shuffled by the data pipeline
  if nan_guard.bad_step is not None:
    kept = manager.latest_checkpoint or 'none yet'
    raise TrainingError(
        f'The loss became NaN or infinite at step {nan_guard.bad_step} '
        f'({", ".join(nan_guard.bad_metrics)}); training stopped and the last good checkpoint '
        f'({kept}) is kept. Lower the learning rate or the loss weights, then rerun to resume.')
  return history

