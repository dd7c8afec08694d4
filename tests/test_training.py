"""The shared training loop: resume, NaN stop, run settings, TensorBoard, binary errors."""

import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

from igam_tf import experiments
from igam_tf import model_io
from igam_tf import model_sources
from igam_tf import settings
from igam_tf import training
from igam_tf.architectures import build_classifier
from igam_tf.baselines import StandardTraining
from igam_tf.discriminator import build_discriminator
from igam_tf.igam import IGAM
from igam_tf.teacher import Teacher
from tests.folder_fixtures import folder_contents
from tests import tf1_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stream(seed=0, poison_from=None, poison=np.nan):
  """A deterministic, endless stream of 8 x 12x12x3 batches; from batch `poison_from`
  on, its images are `poison` (NaN, or a raising py_function when poison is None)."""
  rng = np.random.RandomState(seed)
  images = rng.rand(64, 12, 12, 3).astype(np.float32)
  labels = rng.randint(0, 3, 64)
  batches = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(
      64, seed=seed, reshuffle_each_iteration=True).batch(8, drop_remainder=True).repeat()
  if poison_from is None:
    return batches

  def interrupt():
    raise KeyboardInterrupt('simulated interruption')

  def maybe_poison(index, batch):
    x, y = batch
    if poison is None:
      x = tf.cond(index >= poison_from,
                  lambda: tf.ensure_shape(tf.py_function(interrupt, [], tf.float32), x.shape),
                  lambda: x)
    else:
      x = tf.where(index >= poison_from, tf.fill(tf.shape(x), poison), x)
    return x, y
  return batches.enumerate().map(maybe_poison)


def make_igam(seed=0):
  keras.utils.set_random_seed(seed)
  teacher = Teacher(build_classifier('simple_cnn', 4, (12, 12, 1), filters=(8, 8)), 3,
                    'channel_average')
  teacher(tf.zeros((1, 12, 12, 3)))
  student = build_classifier('madry_resnet', 3, (12, 12, 3), activation='softplus',
                             filters=(4, 4, 8, 8), units_per_stage=1)
  model = IGAM(student, teacher, build_discriminator(2, 4), diff_weight=1e4, disc_every=2)
  model.compile(keras.optimizers.SGD(0.01, momentum=0.9), keras.optimizers.Adam(1e-3))
  return model


def state(model):
  return [v.numpy() for v in model.weights] + [
      v.numpy() for v in model.optimizer.variables + model.discriminator_optimizer.variables]


class ResumeTest(tf.test.TestCase):

  def test_interrupted_run_resumes_to_the_same_state(self):
    straight_dir, resumed_dir = tempfile.mkdtemp(), tempfile.mkdtemp()
    straight = make_igam()
    training.train(straight, stream(), model_dir=straight_dir, total_steps=6,
                   checkpoint_every=2, verbose=0)

    interrupted = make_igam()
    with self.assertRaises(Exception):  # stopped in the third interval, after step 4's save
      training.train(interrupted, stream(poison_from=5, poison=None), model_dir=resumed_dir,
                     total_steps=6, checkpoint_every=2, verbose=0)
    self.assertEqual(tf.train.latest_checkpoint(os.path.join(resumed_dir, 'checkpoints')),
                     os.path.join(resumed_dir, 'checkpoints', 'ckpt-4'))
    data = stream()  # (made first: the global seed set below would reorder it)
    resumed = make_igam(seed=1)  # a fresh process would start from other weights
    training.train(resumed, data, model_dir=resumed_dir, total_steps=6, checkpoint_every=2,
                   verbose=0)

    self.assertEqual(int(resumed.optimizer.iterations), 6)
    for a, b in zip(state(straight), state(resumed)):
      self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)
    # A finished run restarted does nothing more.
    history = training.train(resumed, stream(), model_dir=resumed_dir, total_steps=6,
                             checkpoint_every=2, verbose=0)
    self.assertEmpty(history.history)

  def test_the_host_reads_metrics_once_per_call_of_several_steps(self):
    # 8 steps, summaries every 4: two calls of 4 steps each, with the weights of one
    # step per call (summaries every step).
    trained = {}
    for summary_every in (1, 4):
      keras.utils.set_random_seed(0)
      model = StandardTraining(build_classifier('simple_cnn', 3, (12, 12, 3), filters=(8, 8)))
      model.compile(optimizer=keras.optimizers.SGD(0.05))
      with mock.patch.object(training._StopOnNaN, 'on_train_batch_end', autospec=True,
                             side_effect=training._StopOnNaN.on_train_batch_end) as calls:
        training.train(model, stream(), model_dir=tempfile.mkdtemp(), total_steps=8,
                       checkpoint_every=8, summary_every=summary_every, verbose=0)
      self.assertEqual(calls.call_count, 8 // summary_every)
      self.assertEqual(model.steps_per_execution, summary_every)
      trained[summary_every] = [w.numpy() for w in model.weights]
    for a, b in zip(trained[1], trained[4]):
      self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)

  def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(self):
    model_dir = tempfile.mkdtemp()
    keras.utils.set_random_seed(0)
    model = StandardTraining(build_classifier('simple_cnn', 3, (12, 12, 3), filters=(8, 8)))
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    with self.assertRaisesRegex(training.TrainingError,
                                r'NaN or infinite in steps 3-4 .*ckpt-2.* is kept'):
      training.train(model, stream(poison_from=2), model_dir=model_dir, total_steps=6,
                     checkpoint_every=2, verbose=0)
    checkpoints = os.path.join(model_dir, 'checkpoints')
    self.assertEqual(os.path.basename(tf.train.latest_checkpoint(checkpoints)), 'ckpt-2')
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(checkpoints))
    for name in reader.get_variable_to_shape_map():
      value = reader.get_tensor(name)
      if np.issubdtype(np.asarray(value).dtype, np.floating):
        self.assertTrue(np.all(np.isfinite(value)), name)

  def test_rerun_with_other_settings_is_refused(self):
    model_dir = tempfile.mkdtemp()
    config = {'igam': {'adv_weight': 2.0}, 'data': {'classes': (1, 2)}}
    self.assertEqual(training.check_run_config(model_dir, config), [])  # nothing recorded
    self.assertEmpty(os.listdir(model_dir))  # checking writes nothing
    training.record_run_config(model_dir, config)
    self.assertEqual(training.check_run_config(model_dir, config), [])
    other = {'igam': {'adv_weight': 5.0}, 'data': {'classes': (1, 2)}}
    with self.assertRaisesRegex(training.TrainingError, r'adv_weight: 2.0 there, 5.0 now.*'
                                r'--resume_with_changes=adv_weight'):
      training.check_run_config(model_dir, other)
    self.assertEqual(training.check_run_config(model_dir, other, ('adv_weight',)),
                     [('adv_weight', 2.0, 5.0)])
    # The data (or the architecture) never changes on resume, named or not.
    other_data = {'igam': {'adv_weight': 2.0}, 'data': {'classes': (1, 3)}}
    with self.assertRaisesRegex(training.TrainingError, r'classes cannot change on resume'):
      training.check_run_config(model_dir, other_data, ('adv_weight',))
    with self.assertRaisesRegex(training.TrainingError,
                                r'classes changes the model\'s architecture or its data'):
      training.check_run_config(model_dir, other_data, ('classes',))
    # Nor a constant learning rate into a schedule (the optimizer's saved state differs).
    training.record_run_config(model_dir, {'optimizer': {'lr_boundaries': ()}})
    with self.assertRaisesRegex(training.TrainingError, r'--lr_boundaries: .* constant'):
      training.check_run_config(model_dir, {'optimizer': {'lr_boundaries': (5,)}},
                                ('lr_boundaries',))

  def test_resume_with_changes_records_them_and_uses_the_new_learning_rate(self):
    model_dir = tempfile.mkdtemp()

    def model(learning_rate):
      keras.utils.set_random_seed(0)
      made = StandardTraining(build_classifier('simple_cnn', 3, (12, 12, 3), filters=(4, 4)))
      made.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9))
      return made

    config = lambda rate, steps: {'optimizer': {'learning_rate': rate}, 'train_steps': steps}
    with self.assertRaisesRegex(training.TrainingError, 'multiple of the checkpoint'):
      training.train(model(0.01), stream(), model_dir=model_dir, total_steps=3,
                     checkpoint_every=2, verbose=0, run_config=config(0.01, 3))
    self.assertEmpty(os.listdir(model_dir))  # a failed check records no settings
    training.train(model(0.01), stream(), model_dir=model_dir, total_steps=2,
                   checkpoint_every=2, verbose=0, run_config=config(0.01, 2))
    with self.assertRaisesRegex(training.TrainingError, 'resume_with_changes=learning_rate'):
      training.train(model(0.001), stream(), model_dir=model_dir, total_steps=2,
                     checkpoint_every=2, verbose=0, run_config=config(0.001, 2))
    resumed = model(0.001)
    training.train(resumed, stream(), model_dir=model_dir, total_steps=4, checkpoint_every=2,
                   verbose=0, run_config=config(0.001, 4),
                   resume_with_changes=('learning_rate', 'train_steps'))
    self.assertEqual(int(resumed.optimizer.iterations), 4)
    # The checkpoint held 0.01; the run goes on at the rate it was given.
    self.assertAllClose(float(resumed.optimizer.learning_rate), 0.001)
    with open(os.path.join(model_dir, training.RUN_HISTORY)) as f:
      self.assertEqual(json.load(f), [
          {'step': 2, 'setting': 'learning_rate', 'old': 0.01, 'new': 0.001},
          {'step': 2, 'setting': 'train_steps', 'old': 2, 'new': 4}])
    with open(os.path.join(model_dir, training.RUN_CONFIG)) as f:
      self.assertEqual(json.load(f), config(0.001, 4))


  def test_settings_of_a_run_that_reached_no_checkpoint_are_replaced(self):
    model_dir = tempfile.mkdtemp()

    def model():
      keras.utils.set_random_seed(0)
      made = StandardTraining(build_classifier('simple_cnn', 3, (12, 12, 3), filters=(4, 4)))
      made.compile(optimizer=keras.optimizers.SGD(0.01))
      return made

    config = lambda rate: {'optimizer': {'learning_rate': rate}}
    with self.assertRaisesRegex(training.TrainingError, r'\(none yet\) is kept.*rerun to train '
                                r'afresh'):
      training.train(model(), stream(poison_from=0), model_dir=model_dir, total_steps=2,
                     checkpoint_every=2, verbose=0, run_config=config(10.0))
    training.train(model(), stream(), model_dir=model_dir, total_steps=2, checkpoint_every=2,
                   verbose=0, run_config=config(0.01))  # nothing to resume: not refused
    with open(os.path.join(model_dir, training.RUN_CONFIG)) as f:
      self.assertEqual(json.load(f), config(0.01))
    # A folder holding more (here a trained model) keeps its settings without checkpoints.
    shutil.rmtree(os.path.join(model_dir, 'checkpoints'))
    model_io.save_model(model_dir, build_classifier('simple_cnn', 3, (12, 12, 3), filters=(4,)),
                        {})
    with self.assertRaisesRegex(training.TrainingError, 'resume_with_changes=learning_rate'):
      training.train(model(), stream(), model_dir=model_dir, total_steps=2,
                     checkpoint_every=2, verbose=0, run_config=config(0.1))


def _truncate(path, size=None):
  with open(path, 'rb') as f:
    content = f.read()
  with open(path, 'wb') as f:
    f.write(content[:len(content) // 2 if size is None else size])


def _scramble(path):
  with open(path, 'rb') as f:
    content = bytearray(f.read())
  for i in range(0, len(content), 7):
    content[i] ^= 0xff
  with open(path, 'wb') as f:
    f.write(bytes(content))


class DamagedCheckpointTest(tf.test.TestCase):
  """A damaged newest checkpoint is skipped, with a warning, for the newest that restores."""

  DATA, INDEX = 'ckpt-6.data-00000-of-00001', 'ckpt-6.index'
  DAMAGES = {
      'corrupt index': lambda d: _scramble(os.path.join(d, DamagedCheckpointTest.INDEX)),
      'truncated index': lambda d: _truncate(os.path.join(d, DamagedCheckpointTest.INDEX)),
      'emptied index': lambda d: _truncate(os.path.join(d, DamagedCheckpointTest.INDEX), 0),
      'deleted index': lambda d: os.remove(os.path.join(d, DamagedCheckpointTest.INDEX)),
      'corrupt data': lambda d: _scramble(os.path.join(d, DamagedCheckpointTest.DATA)),
      'truncated data': lambda d: _truncate(os.path.join(d, DamagedCheckpointTest.DATA)),
      'emptied data': lambda d: _truncate(os.path.join(d, DamagedCheckpointTest.DATA), 0),
      'deleted data': lambda d: os.remove(os.path.join(d, DamagedCheckpointTest.DATA)),
  }

  @staticmethod
  def model(seed=0):
    keras.utils.set_random_seed(seed)
    model = StandardTraining(build_classifier('simple_cnn', 3, (12, 12, 3), filters=(4, 4)))
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    return model

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.trained_dir = tempfile.mkdtemp()
    cls.trained = cls.model()
    training.train(cls.trained, stream(), model_dir=cls.trained_dir, total_steps=6,
                   checkpoint_every=2, verbose=0)

  def copy(self):
    model_dir = os.path.join(tempfile.mkdtemp(), 'run')
    shutil.copytree(self.trained_dir, model_dir)
    return model_dir, os.path.join(model_dir, 'checkpoints')

  def test_each_damage_of_the_newest_falls_back_to_the_one_before(self):
    for damage, apply in self.DAMAGES.items():
      with self.subTest(damage):
        model_dir, checkpoints = self.copy()
        apply(checkpoints)
        keras.utils.set_random_seed(0)
        data = stream()  # (made under the first run's global seed: the same order)
        resumed = self.model(seed=1)  # a fresh process would start from other weights
        with self.assertLogs(level='WARNING') as logs:
          training.train(resumed, data, model_dir=model_dir, total_steps=6,
                         checkpoint_every=2, verbose=0)
        self.assertTrue(any('Skipped checkpoint' in line and 'ckpt-6' in line
                            for line in logs.output), logs.output)
        self.assertTrue(any('Resuming from' in line and 'ckpt-4' in line
                            for line in logs.output), logs.output)
        # Steps 5 and 6 trained again from ckpt-4: the same state as the first run's.
        self.assertEqual(int(resumed.optimizer.iterations), 6)
        for a, b in zip(self.trained.weights, resumed.weights):
          self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)
        self.assertEqual(os.path.basename(tf.train.latest_checkpoint(checkpoints)), 'ckpt-6')
        tf.train.load_checkpoint(os.path.join(checkpoints, 'ckpt-6'))  # rewritten whole

  def test_a_damaged_checkpoint_state_file_still_finds_the_checkpoints(self):
    model_dir, checkpoints = self.copy()
    with open(os.path.join(checkpoints, 'checkpoint'), 'w') as f:
      f.write('{{{ not a checkpoint state')
    resumed = self.model(seed=1)
    history = training.train(resumed, stream(), model_dir=model_dir, total_steps=6,
                             checkpoint_every=2, verbose=0)
    self.assertEmpty(history.history)  # resumed from ckpt-6, not trained again from 0
    self.assertEqual(int(resumed.optimizer.iterations), 6)

  def test_no_checkpoint_restores_gives_one_line_error_and_changes_nothing(self):
    model_dir, checkpoints = self.copy()
    for name in os.listdir(checkpoints):
      if name.startswith('ckpt-') and '.data-' in name:
        _truncate(os.path.join(checkpoints, name))
    before = folder_contents(model_dir)
    with self.assertRaisesRegex(training.TrainingError, 'No checkpoint in .*checkpoints '
                                'restores') as raised:
      training.train(self.model(), stream(), model_dir=model_dir, total_steps=6,
                     checkpoint_every=2, verbose=0, run_config={'a': 1})
    self.assertNotIn('\n', str(raised.exception))
    for name in ('ckpt-2', 'ckpt-4', 'ckpt-6'):
      self.assertIn(name, str(raised.exception))
    self.assertEqual(folder_contents(model_dir), before)

  def test_tensorboard_gets_every_loss_term_and_gradient_images(self):
    model_dir = tempfile.mkdtemp()
    model = make_igam()
    training.train(model, stream(), model_dir=model_dir, total_steps=2, checkpoint_every=2,
                   validation=stream().take(2), summary_every=1, verbose=0,
                   gradient_models={'student': model.student, 'teacher': model.teacher})
    tags = set()
    for path in glob.glob(os.path.join(model_dir, 'logs', 'events.*')):
      for event in tf.compat.v1.train.summary_iterator(path):
        tags.update(value.tag for value in event.summary.value)
    for tag in ('train/loss', 'train/xent', 'train/adv_loss', 'train/diff_loss',
                'train/disc_accuracy', 'validation/accuracy', 'input_gradients/student',
                'input_gradients/teacher'):
      self.assertIn(tag, tags)


class JobTest(tf.test.TestCase):

  def test_igam_job_on_digits_saves_a_student_that_loads(self):
    root = tempfile.mkdtemp()
    source = settings.DataSettings('digits', classes=(0, 1, 2), batch_size=16, image_size=12)
    target = settings.DataSettings('digits', classes=(3, 4, 5), batch_size=16, image_size=12)
    small = settings.StudentSettings('simple_cnn', filters=(8, 8))
    quick = lambda name: settings.RunSettings(os.path.join(root, name), 2, 2, verbose=0)
    adam = settings.OptimizerSettings('adam', 1e-3, weight_decay=0.0)
    experiments.train_baseline(settings.BaselineJob('standard', student=small, optimizer=adam,
                                                    data=source, run=quick('source')))
    experiments.finetune_teacher(settings.FinetuneJob(os.path.join(root, 'source'),
                                                      data=target, run=quick('teacher')))
    job = settings.IGAMJob(
        os.path.join(root, 'teacher'), igam=settings.IGAMSettings(disc_blocks=2),
        student=settings.StudentSettings('madry_resnet', filters=(4, 4, 8, 8),
                                         units_per_stage=1, activation='gelu'),
        optimizer=adam, data=target, run=quick('igam'))
    student = experiments.train_igam(job)
    loaded, spec = model_io.load_model(os.path.join(root, 'igam'))
    self.assertEqual(spec['num_classes'], 3)
    images = tf.random.uniform((2, 12, 12, 1))
    self.assertAllClose(student(images), loaded(images))
    # Another IGAM run that starts from this student (--init_from), SGD at 1e-30: its
    # trainable weights end where they started (BN's moving statistics move on).
    again = experiments.train_igam(dataclasses.replace(
        job, init_from=os.path.join(root, 'igam'), run=quick('igam_again'),
        optimizer=settings.OptimizerSettings('sgd', 1e-30, weight_decay=0.0)))
    for got, want in zip(again.trainable_weights, student.trainable_weights):
      self.assertAllClose(got, want, atol=1e-6)
    with self.assertRaisesRegex(model_io.ModelError, 'not a finetuned teacher'):
      experiments.train_igam(settings.IGAMJob(os.path.join(root, 'source'), student=small,
                                              optimizer=adam, data=target, run=quick('igam2')))


  def test_igam_from_a_checkpoint_with_the_authors_finetuned_head(self):
    root = tempfile.mkdtemp()
    prefix, images, head_logits = tf1_reference.build_madry_mnist_checkpoint(
        os.path.join(root, 'authors'), finetuned_classes=3)
    teacher, spec = model_sources.load_teacher(f'madry_mnist:{prefix}', (28, 28, 1))
    self.assertEqual(spec['num_classes'], 3)
    self.assertLessEqual(tf1_reference.relative_error(teacher(images), head_logits), 1e-4)
    experiments.train_igam(settings.IGAMJob(
        f'madry_mnist:{prefix}', igam=settings.IGAMSettings(disc_blocks=2),
        student=settings.StudentSettings('simple_cnn', filters=(8, 8), activation='gelu'),
        optimizer=settings.OptimizerSettings('adam', 1e-3, weight_decay=0.0),
        data=settings.DataSettings('digits', classes=(3, 4, 5), batch_size=8,
                                   validation_split=''),
        run=settings.RunSettings(os.path.join(root, 'igam'), 2, 2, verbose=0)))
    self.assertTrue(experiments.trained_model_exists(os.path.join(root, 'igam')))
    with self.assertRaisesRegex(model_io.ModelError, 'holds its own input transform'):
      model_sources.load_teacher(os.path.join(root, 'igam'), (28, 28, 1), 'channel_average')


class BinaryErrorTest(tf.test.TestCase):

  def run_binary(self, *argv):
    return subprocess.run([sys.executable, '-m', *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=300)

  def test_bad_input_gets_a_one_line_error(self):
    model_dir = tempfile.mkdtemp()
    result = self.run_binary('igam_tf.train_igam', '--teacher=/no/such/teacher',
                             '--dataset=digits', f'--model_dir={model_dir}')
    self.assertEqual(result.returncode, 1)
    self.assertIn("ERROR: '/no/such/teacher' is not a trained model folder", result.stderr)
    self.assertNotIn('Traceback', result.stderr)
    result = self.run_binary('igam_tf.train_baseline', '--method=standard',
                             '--dataset=imagenet', f'--model_dir={model_dir}')
    self.assertEqual(result.returncode, 1)
    self.assertIn('ERROR:', result.stderr)
    self.assertIn('imagenet', result.stderr)
    self.assertNotIn('Traceback', result.stderr)


if __name__ == '__main__':
  tf.test.main()
