"""Bad input to the training binaries, run as a user runs them: each gets a non-zero exit,
a one-line ERROR naming the flag or file, no traceback, and its model folder as it was;
a damaged checkpoint or a NaN loss leaves a way to resume; the defaults train."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from igam_tf import data
from igam_tf import model_io
from tests import binary_runs
from tests.folder_fixtures import folder_contents
from tests import tf1_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny run of train_baseline: 8 steps, checkpoints at 4 and 8.
TINY = ('--method=standard', '--dataset=digits', '--classes=0,1', '--batch_size=16',
        '--student_architecture=simple_cnn', '--student_filters=4,8', '--validation_split=',
        '--checkpoint_every=4')


def run_binary(binary, *argv):
  return subprocess.run([sys.executable, '-m', f'igam_tf.{binary}', *argv], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))


def truncate(path):
  with open(path, 'rb') as f:
    content = f.read()
  with open(path, 'wb') as f:
    f.write(content[:len(content) // 2])


class ReliabilityTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.trained = os.path.join(cls.root, 'trained')
    result = run_binary('train_baseline', *TINY, '--train_steps=8', f'--model_dir={cls.trained}')
    assert result.returncode == 0, result.stderr[-3000:]

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def copy_of_trained(self):
    model_dir = os.path.join(tempfile.mkdtemp(dir=self.root), 'run')
    shutil.copytree(self.trained, model_dir)
    return model_dir

  def assert_one_error(self, result, *expected):
    """A non-zero exit with one ERROR line holding each of `expected`, no traceback."""
    self.assertNotEqual(result.returncode, 0, result.stdout[-2000:])
    self.assertNotIn('Traceback', result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith('ERROR:')]
    self.assertLen(errors, 1, result.stderr[-3000:])
    for part in expected:
      self.assertIn(part, errors[0])
    self.assertNotIn('saved', result.stdout)
    return errors[0]

  def assert_refused(self, binary, argv, model_dir, *expected):
    """The binary exits non-zero with one ERROR line holding each of `expected`, no
    traceback, and `model_dir` exactly as it was."""
    return self.assert_all_refused(binary, [(argv, *expected)], model_dir)[0]

  def assert_all_refused(self, binary, cases, model_dir):
    """assert_refused for each (argv, *expected) of `cases`, run in one process."""
    before = folder_contents(model_dir)
    errors = self.assert_errors(binary, cases, (f'--model_dir={model_dir}',))
    self.assertEqual(folder_contents(model_dir), before)
    return errors

  def assert_errors(self, binary, cases, common=()):
    """assert_one_error for the binary run with each (argv, *expected) of `cases` (argv
    followed by `common`), in one process; returns the ERROR lines."""
    runs = binary_runs.run_refused(binary, [tuple(argv) + tuple(common) for argv, *_ in cases])
    errors = []
    for (argv, *expected), result in zip(cases, runs):
      with self.subTest(f'{binary} {" ".join(argv)}'):
        errors.append(self.assert_one_error(result, *expected))
    return errors

  def test_a_training_split_smaller_than_one_batch_is_refused_by_every_binary(self):
    # Digits 5 and 6 have 254 training examples: no whole batch of 256.
    task = ('--dataset=digits', '--classes=5,6', '--batch_size=256', '--train_steps=10',
            '--checkpoint_every=5')
    expected = ('254 examples', 'fewer than one batch', '--batch_size=256')
    model_dir = tempfile.mkdtemp(dir=self.root)
    self.assert_refused('train_baseline', ('--method=standard', '--student_architecture='
                                           'simple_cnn') + task, model_dir, *expected)
    # The data are checked before the source or teacher is loaded.
    self.assert_refused('finetune_teacher', (f'--source={self.trained}',) + task, model_dir,
                        *expected)
    self.assert_refused('train_igam', (f'--teacher={self.trained}',) + task, model_dir,
                        *expected)

  def test_a_failed_run_does_not_block_its_folder(self):
    model_dir = os.path.join(tempfile.mkdtemp(dir=self.root), 'run')
    os.makedirs(model_dir)
    self.assert_all_refused('train_baseline', [
        (TINY + ('--train_steps=6',), '--train_steps must be a multiple of --checkpoint_every'),
        (TINY + ('--train_steps=4', '--batch_size=4096'), '--batch_size=4096')], model_dir)
    self.assertEmpty(os.listdir(model_dir))  # no settings recorded by the failed runs
    result = run_binary('train_baseline', *TINY, '--train_steps=4', f'--model_dir={model_dir}')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('model saved', result.stdout)
    with open(os.path.join(model_dir, 'run_config.json')) as f:
      self.assertEqual(json.load(f)['train_steps'], 4)

  def test_nan_loss_then_resume_with_a_lower_learning_rate(self):
    model_dir = self.copy_of_trained()
    longer = TINY + ('--train_steps=12',)
    # Adam at 1e20: step 9 blows the weights up, and step 10's loss is not finite.
    result = run_binary('train_baseline', *longer, '--learning_rate=1e20',
                        '--resume_with_changes=learning_rate,train_steps',
                        f'--model_dir={model_dir}')
    self.assertEqual(result.returncode, 1, result.stderr[-3000:])
    self.assertNotIn('Traceback', result.stderr)
    self.assertRegex(result.stderr, r'ERROR: The loss became NaN .*ckpt-8\) is kept.*'
                     r'--resume_with_changes=learning_rate')
    self.assertEqual(os.path.basename(tf.train.latest_checkpoint(
        os.path.join(model_dir, 'checkpoints'))), 'ckpt-8')
    # The advice followed without the flag: refused, naming the flag to use.
    self.assert_refused('train_baseline', longer + ('--learning_rate=0.001',), model_dir,
                        'learning_rate: 1e+20 there, 0.001 now',
                        '--resume_with_changes=learning_rate')
    result = run_binary('train_baseline', *longer, '--learning_rate=0.001',
                        '--resume_with_changes=learning_rate', f'--model_dir={model_dir}')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('Resumed from', result.stderr)
    self.assertIn('ckpt-8', result.stderr)
    self.assertEqual(os.path.basename(tf.train.latest_checkpoint(
        os.path.join(model_dir, 'checkpoints'))), 'ckpt-12')
    with open(os.path.join(model_dir, 'run_history.json')) as f:
      self.assertEqual(json.load(f), [
          {'step': 8, 'setting': 'learning_rate', 'old': 0.003, 'new': 1e20},
          {'step': 8, 'setting': 'train_steps', 'old': 8, 'new': 12},
          {'step': 8, 'setting': 'learning_rate', 'old': 1e20, 'new': 0.001}])
    with open(os.path.join(model_dir, 'run_config.json')) as f:
      config = json.load(f)
    self.assertEqual(config['optimizer']['learning_rate'], 0.001)
    self.assertEqual(config['train_steps'], 12)
    # The architecture or the data never change on resume, even when named.
    self.assert_refused('train_baseline', longer + ('--resume_with_changes=student_filters',),
                        model_dir, '--resume_with_changes', 'student_filters',
                        'architecture or its data')

  def test_a_damaged_newest_checkpoint_falls_back_to_an_older_one(self):
    model_dir = self.copy_of_trained()
    checkpoints = os.path.join(model_dir, 'checkpoints')
    truncate(os.path.join(checkpoints, 'ckpt-8.data-00000-of-00001'))
    result = run_binary('train_baseline', *TINY, '--train_steps=8', f'--model_dir={model_dir}')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertNotIn('Traceback', result.stderr)
    self.assertRegex(result.stderr, r'Skipped checkpoint \S*ckpt-8: it does not restore')
    self.assertRegex(result.stderr, r'Resuming from \S*ckpt-4')
    tf.train.load_checkpoint(os.path.join(checkpoints, 'ckpt-8'))  # trained again, whole

  def test_no_checkpoint_that_restores_is_a_one_line_error(self):
    model_dir = self.copy_of_trained()
    checkpoints = os.path.join(model_dir, 'checkpoints')
    for name in os.listdir(checkpoints):
      if '.data-' in name:
        truncate(os.path.join(checkpoints, name))
    self.assert_refused('train_baseline', TINY + ('--train_steps=8',), model_dir,
                        f'No checkpoint in {checkpoints} restores', 'ckpt-4', 'ckpt-8')

  def test_a_truncated_madry_checkpoint_is_a_one_line_error(self):
    folder = os.path.join(self.root, 'madry_mnist')
    prefix, _, _ = tf1_reference.build_madry_mnist_checkpoint(folder, batch_size=2)
    data_file = prefix + '.data-00000-of-00001'
    truncate(data_file)
    self.assert_refused('finetune_teacher', (
        f'--source=madry_mnist:{folder}', '--dataset=digits', '--classes=0,1',
        '--batch_size=16', '--train_steps=2', '--checkpoint_every=2'),
        tempfile.mkdtemp(dir=self.root), data_file, 'truncated')

  def test_nonsense_flags_are_refused_before_any_work(self):
    model_dir = self.copy_of_trained()
    baseline = TINY + ('--train_steps=8',)
    igam = ('--teacher=/no/such/teacher', '--dataset=digits')
    cases = [
        ('train_baseline', ('--method=pgd_at', '--epsilon=1.5'), '--epsilon'),
        ('train_baseline', ('--method=pgd_at', '--epsilon=-0.1'), '--epsilon'),
        ('train_baseline', ('--method=pgd_at', '--pgd_steps=0'), '--pgd_steps'),
        ('train_baseline', ('--method=pgd_at', '--pgd_step_size=0'), '--pgd_step_size'),
        ('train_baseline', ('--method=pgd_at', '--pgd_step_size=-0.01'), '--pgd_step_size'),
        ('train_baseline', ('--learning_rate=-0.1',), '--learning_rate'),
        ('train_baseline', ('--weight_decay=-1e-4',), '--weight_decay'),
        ('train_baseline', ('--method=grad_norm', '--penalty_weight=-1'), '--penalty_weight'),
        ('train_baseline', ('--source=madry_mnist:x',), '--source'),
        ('train_baseline', ('--method=pgd_at', '--transform=resize:28'), '--transform'),
        ('train_baseline', ('--classes=5',), '--classes'),
        ('train_baseline', ('--method=grad_norm', '--mixed_precision=mixed_float16'),
         '--mixed_precision=mixed_float16', 'mixed_bfloat16'),
        ('train_igam', igam + ('--mixed_precision=mixed_float16',),
         '--mixed_precision=mixed_float16', 'mixed_bfloat16'),
        # Flags the method would ignore.
        ('train_baseline', ('--method=finetune', '--source=s', f'--init_from={self.trained}',
                            '--optimizer=sgd'),
         '--init_from', '--optimizer', 'are not used by --method=finetune'),
        ('train_baseline', ('--teacher_bn=batch',), '--teacher_bn is not used by --method=standard'),
        # XLA under several replicas (XLA cannot use another device's variables).
        ('train_baseline', ('--strategy=mirrored', '--cpu_replicas=2', '--jit_compile'),
         '--jit_compile does not run under the 2 replicas'),
        ('train_baseline', ('--student_filters=0,4',), '--student_filters takes positive widths'),
        ('train_baseline', ('--momentum=1.5',), '--momentum'),
        ('train_igam', igam + ('--adv_weight=-1',), '--adv_weight'),
        ('train_igam', igam + ('--diff_weight=-10',), '--diff_weight'),
        ('finetune_teacher', ('--source=/no/such/source', '--learning_rate=-1e-3'),
         '--learning_rate'),
    ]
    for binary in ('train_baseline', 'train_igam', 'finetune_teacher'):
      self.assert_all_refused(binary, [
          ((baseline + argv) if binary == 'train_baseline' else argv, *expected)
          for name, argv, *expected in cases if name == binary], model_dir)

  def test_bad_evaluation_flags_are_refused_before_any_attack(self):
    model_dir = self.copy_of_trained()
    in_the_way = os.path.join(self.root, 'a_file')
    with open(in_the_way, 'w') as f:
      f.write('not a folder')
    task = ('--dataset=digits', '--classes=0,1', '--num_examples=8')
    cases = [(('--epsilon=2',), '--epsilon=2 is outside (0, 1]'),
             (('--epsilon=0',), '--epsilon=0 is outside (0, 1]'),
             (('--step_size=0',), '--step_size=0 is outside (0, 1]'),
             (('--epsilon=big',), '--epsilon'),
             (('--attacks=pgd0',), "'pgd0' takes no step at all"),
             (('--attacks=clean,pgd20_linf',), "Unknown attack 'pgd20_linf'"),
             ((f'--output={in_the_way}/report.json',), f'--output={in_the_way}/report.json',
              'is a file, not a folder')]
    self.assert_all_refused('evaluate', [(task + argv, *expected) for argv, *expected in cases],
                            model_dir)

  def test_bad_paths_and_damaged_files_get_one_line_errors(self):
    in_the_way = os.path.join(self.root, 'in_the_way')
    with open(in_the_way, 'w') as f:
      f.write('not a folder')
    damaged = self.copy_of_trained()
    spec_file = os.path.join(damaged, model_io.SPEC_FILE)
    with open(spec_file, 'w') as f:
      f.write('{"kind": ')
    exports = [
        (('--model=trained', f'--model_dir={self.trained}', f'--export_dir={in_the_way}/export'),
         f'--export_dir={in_the_way}/export', 'is a file, not a folder'),
        ((f'--model_dir={self.trained}',), '--model', '--export_dir'),
        (('--model=trained', f'--model_dir={damaged}', f'--export_dir={self.root}/export_damaged'),
         spec_file, 'is not a model spec')]
    self.assert_errors('export', exports)
    self.assertFalse(os.path.exists(f'{self.root}/export_damaged'))
    self.assert_one_error(run_binary('train_baseline', *TINY, '--train_steps=4',
                                     f'--model_dir={in_the_way}/run'),
                          f'--model_dir={in_the_way}/run', 'is a file, not a folder')
    self.assert_refused('train_baseline', TINY + ('--resume_with_changes=lerning_rate',),
                        self.copy_of_trained(), 'lerning_rate, which is not a flag')
    self.assert_refused('evaluate', ('--dataset=digits', '--classes=0,1'), damaged, spec_file)
    # The demo and visualize, before any training or drawing.
    self.assert_errors('demo', [((f'--output_dir={in_the_way}/demo',),
                                 f'--output_dir={in_the_way}/demo', 'is a file, not a folder')])
    visualize = [((f'--models={self.root}/no_such_model',), 'no_such_model', 'nor a folder'),
                 ((f'--models=a={self.trained},a={self.trained}',), "--models names 'a' twice"),
                 ((f'--models={self.root}',), 'holds no model')]
    self.assert_errors('visualize', visualize,
                       ('--dataset=digits', f'--output={self.root}/grid.png'))
    self.assertFalse(os.path.exists(f'{self.root}/grid.png'))
    with open(os.path.join(damaged, 'run_config.json'), 'w') as f:
      f.write('')
    self.assert_refused('train_baseline', TINY + ('--train_steps=8',), damaged,
                        os.path.join(damaged, 'run_config.json'), 'move it aside')

  def test_bad_demo_export_and_visualize_flags_are_refused_before_any_work(self):
    output_dir = os.path.join(self.root, 'demo_never_made')
    cases = [(('--teacher_steps=0',), '--teacher_steps must be positive'),
             (('--student_steps=-1',), '--student_steps must be positive'),
             (('--batch_size=-8',), '--batch_size must be positive'),
             (('--epsilon=2',), '--epsilon must be in (0, 1]'),
             (('--attacks=clean,bogus',), "--attacks: Unknown attack 'bogus'"),
             (('--seeds=a,b',), '--seeds takes integers'),
             (('--target_classes=5',), '--target_classes takes two or more different digits'),
             (('--source_classes=3,12',), '--source_classes takes two or more different'),
             (('--student_filters=16,16',), '--student_filters: madry_resnet takes 4 widths')]
    self.assert_errors('demo', cases, (f'--output_dir={output_dir}',))
    self.assertFalse(os.path.exists(output_dir))
    a_file = os.path.join(self.root, 'a_file_not_a_folder')
    with open(a_file, 'w') as f:
      f.write('in the way')
    cases = [((f'--model_dir={self.trained}', f'--export_dir={a_file}'),
              f'--export_dir={a_file} is a file'),
             ((f'--export_dir={self.root}/never_exported',), '--model=trained needs --model_dir')]
    self.assert_errors('export', cases, ('--model=trained',))
    self.assertFalse(os.path.exists(f'{self.root}/never_exported'))
    self.assert_errors('visualize', [((f'--models={self.trained}', '--dataset=digits',
                                       '--classes=0,1', f'--output={self.root}'),
                                      f'--output={self.root} is a folder')])

  def test_a_teacher_is_not_a_source(self):
    teacher = os.path.join(self.root, 'teacher')
    result = run_binary('finetune_teacher', f'--source={self.trained}', '--dataset=digits',
                        '--classes=2,3', '--batch_size=16', '--train_steps=2',
                        '--checkpoint_every=2', '--validation_split=', f'--model_dir={teacher}')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    model_dir = tempfile.mkdtemp(dir=self.root)
    self.assert_refused('finetune_teacher', (f'--source={teacher}', '--dataset=digits',
                                             '--classes=0,1'), model_dir,
                        f'{teacher} holds a finetuned teacher, not a classifier')
    self.assert_refused('train_baseline', ('--method=finetune', f'--source={teacher}',
                                           '--dataset=digits', '--classes=0,1'), model_dir,
                        f'{teacher} holds a finetuned teacher, not a classifier')

  def test_teacher_transforms_that_do_not_fit_are_refused(self):
    task = ('--dataset=digits', '--classes=0,1', '--batch_size=16', '--train_steps=2',
            '--checkpoint_every=2', f'--source={self.trained}')
    model_dir = tempfile.mkdtemp(dir=self.root)
    self.assert_all_refused('finetune_teacher', [
        (task + (f'--transform={transform}',), message)
        for transform, message in (('resize:0', 'the size must be a positive integer'),
                                   ('center_crop:400', 'center_crop:400 is larger than'),
                                   ('center_pad:4', 'center_pad:4 is smaller than'),
                                   ('blur:3', 'Unknown teacher transform'))], model_dir)

  def test_init_from_starts_the_student_from_a_trained_one(self):
    # SGD at 1e-30 leaves the weights where they start: at the trained run's.
    warm_up = os.path.join(self.root, 'warm_up')
    shutil.copytree(self.trained, warm_up)
    model_dir = os.path.join(tempfile.mkdtemp(dir=self.root), 'run')
    run = lambda steps: run_binary(
        'train_baseline', *TINY, f'--train_steps={steps}', '--seed=5', '--optimizer=sgd',
        '--learning_rate=1e-30', f'--init_from={warm_up}', '--resume_with_changes=train_steps',
        f'--model_dir={model_dir}')
    result = run(4)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    started, _ = model_io.load_model(model_dir)
    trained, _ = model_io.load_model(self.trained)
    for got, want in zip(started.get_weights(), trained.get_weights()):
      self.assertAllClose(got, want, atol=1e-6)
    with open(os.path.join(model_dir, 'run_config.json')) as f:
      self.assertEqual(json.load(f)['init_from'], warm_up)
    # Resumed from its own checkpoint, the folder it started from gone.
    shutil.rmtree(warm_up)
    result = run(8)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('Resumed from', result.stderr)
    # Another student, a finetuned teacher, or a folder with no trained student: refused,
    # naming the flag.
    teacher = os.path.join(self.root, 'teacher_for_init_from')
    result = run_binary('finetune_teacher', f'--source={self.trained}', '--dataset=digits',
                        '--classes=2,3', '--batch_size=16', '--train_steps=2',
                        '--checkpoint_every=2', '--validation_split=', f'--model_dir={teacher}')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assert_all_refused('train_baseline', [
        (TINY + ('--student_filters=4,16', f'--init_from={self.trained}'),
         f'--init_from={self.trained} holds another model', 'filters [4, 8] there, [4, 16] here'),
        (TINY + (f'--init_from={teacher}',), 'holds a finetuned teacher, not a student'),
        (TINY + (f'--init_from={self.root}',), '--init_from:', 'not a trained model folder')],
        tempfile.mkdtemp(dir=self.root))

  def test_the_default_optimizer_trains_simple_cnn(self):
    # Only the step flags: the architecture's own optimizer and learning rate.
    model_dir = os.path.join(tempfile.mkdtemp(dir=self.root), 'run')
    result = run_binary('train_baseline', '--method=standard', '--dataset=digits',
                        '--classes=0,1,2', '--student_architecture=simple_cnn',
                        '--train_steps=40', '--checkpoint_every=40', f'--model_dir={model_dir}')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    model, _ = model_io.load_model(model_dir)
    correct = total = 0
    train = data.load_dataset('digits', 'train', classes=(0, 1, 2))
    for images, labels in data.make_pipeline(train, 256, training=False):
      correct += int(np.sum(np.argmax(model(images), axis=-1) == labels.numpy()))
      total += len(labels)
    self.assertEqual(total, train.num_examples)
    # Chance is 1/3; momentum SGD at 0.1, the old default, is still near it here.
    self.assertGreater(correct / total, 0.75)


if __name__ == '__main__':
  tf.test.main()
