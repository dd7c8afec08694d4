"""Every flagfile of flags/ parses, and every distinct one starts its run: each row of the
paper's tables, with tiny step counts, small widths and mock data
(tfds.testing.mock_data), its checkpoint paths and data folders moved into a temporary
folder the test makes. Rows that differ from a run one only in numbers (a loss weight,
not zero) or paths, with inputs alike, run the same code: they are parsed by their
binary's flags (validators included), not run again (`flagfiles_to_run`)."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import tensorflow as tf

from tests import tf1_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS_DIR = os.path.join(REPO, 'flags')
# Training order: sources before the teachers finetuned from them, teachers before students.
BINARY_ORDER = ('train_baseline', 'finetune_teacher', 'train_igam', 'demo')
# Run by a test of its own binary (with the same shrink flags), not again here.
RUN_ELSEWHERE = {'demo.cfg': 'tests/test_demo.py'}

# The settings of a student's cross-entropy steps: a row that starts from a warm-up run
# (--init_from) must share them with it.
CROSS_ENTROPY_SETTINGS = (
    'dataset', 'classes', 'image_size', 'augment', 'pixel_noise', 'batch_size', 'seed',
    'student_architecture', 'student_activation', 'student_filters', 'student_units_per_stage',
    'student_input_normalization', 'optimizer', 'learning_rate', 'lr_boundaries', 'lr_values',
    'momentum', 'weight_decay')

# Processes that share each binary's runs: a run is mostly graph tracing, one core's work,
# so two processes use CI's two cores.
WORKERS = 2

# Runs job['runs'] (argv lists) through igam_tf.<job['binary']>'s main in one process.
# Grappler's graph rewrites are off: they cost seconds per run on the large second-order
# graphs and change no result that the test looks at (exit status, files written).
_RUNNER = textwrap.dedent('''
    import importlib, json, os, sys
    from absl import flags
    import tensorflow as tf
    import tensorflow_datasets as tfds
    tf.config.optimizer.set_experimental_options({'disable_meta_optimizer': True})
    job = json.loads(sys.argv[1])
    module = importlib.import_module('igam_tf.' + job['binary'])
    module.define_flags()
    with tfds.testing.mock_data(num_examples=12):
      for argv, parse_only in job['runs']:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(['prog'] + argv)
        code = 'parsed' if parse_only else module.main(['prog'])
        print('RUN', argv[0], 'EXIT', code, flush=True)
''')


def _stop(process):
  if process.poll() is None:
    process.kill()
    process.wait()


def read_flagfile(name):
  """The flags a flagfile sets, includes followed; and the binary its header names."""
  values, binary = {}, None
  with open(os.path.join(FLAGS_DIR, name)) as f:
    for line in f:
      match = re.match(r'# Run: python -m igam_tf\.(\w+) --flagfile=flags/(\S+)$', line.strip())
      if match:
        binary = match.group(1)
        assert match.group(2) == name, f'{name} names another flagfile in its Run line'
      match = re.match(r'--([\w]+)=(.*)$', line.strip())
      if match and match.group(1) == 'flagfile':
        values.update(read_flagfile(os.path.relpath(match.group(2), 'flags'))[0])
      elif match:
        values[match.group(1)] = match.group(2)
  return values, binary


def runnable_flagfiles():
  """Paths under flags/ (e.g. table1/igam_mnist_cifar10.cfg), less flags/common/ (read by
  the others)."""
  return sorted(os.path.relpath(os.path.join(folder, n), FLAGS_DIR)
                for folder, _, files in os.walk(FLAGS_DIR) for n in files
                if n.endswith('.cfg') and os.path.basename(folder) != 'common')


def _value_kind(value):
  """What of a flag's value changes the code a run takes: not a number (unless zero,
  which turns a loss term off), not a path."""
  if re.fullmatch(r'-?[\d.e+-]+', value):
    return '0' if float(value) == 0 else 'number'
  return 'path' if '/' in value else value


def flagfiles_to_run(names):
  """(names to run, names to parse only): the first of each group of flagfiles alike
  (same binary, same flags, values alike, inputs alike), and every flagfile whose output
  a run one reads (--teacher, --source)."""
  flagfiles = {name: read_flagfile(name) for name in names}
  made_by = {values.get('model_dir'): name for name, (values, _) in flagfiles.items()}

  def inputs(name):
    values = flagfiles[name][0]
    return [made_by[values[flag]] for flag in ('teacher', 'source')
            if values.get(flag, '').startswith('runs/')]

  def alike(name):
    values, binary = flagfiles[name]
    return (binary, sorted((flag, _value_kind(v)) for flag, v in values.items()),
            [alike(made) for made in inputs(name)])

  run, seen = set(), []

  def add(name):
    if name not in run:
      run.add(name)
      for made in inputs(name):
        add(made)
  for name in names:
    if alike(name) not in seen:
      seen.append(alike(name))
      add(name)
  return sorted(run), sorted(set(names) - run)


def make_tiny_imagenet(root, wnids=('n01', 'n02', 'n03')):
  rng = np.random.RandomState(0)
  os.makedirs(root)
  with open(os.path.join(root, 'wnids.txt'), 'w') as f:
    f.write('\n'.join(wnids) + '\n')
  annotations = []
  for k, wnid in enumerate(wnids):
    os.makedirs(os.path.join(root, 'train', wnid, 'images'))
    for i in range(4):
      image = tf.constant(rng.randint(0, 256, (64, 64, 3)).astype(np.uint8))
      tf.io.write_file(os.path.join(root, 'train', wnid, 'images', f'{wnid}_{i}.JPEG'),
                       tf.io.encode_jpeg(image))
    annotations.append(f'val_{k}.JPEG\t{wnid}\t0\t0\t63\t63')
    os.makedirs(os.path.join(root, 'val', 'images'), exist_ok=True)
    tf.io.write_file(os.path.join(root, 'val', 'images', f'val_{k}.JPEG'), tf.io.encode_jpeg(
        tf.constant(rng.randint(0, 256, (64, 64, 3)).astype(np.uint8))))
  with open(os.path.join(root, 'val', 'val_annotations.txt'), 'w') as f:
    f.write('\n'.join(annotations) + '\n')


def make_idx_folder(folder, examples=12):
  """MNIST-format IDX files of random 28x28 images, for flagfiles that read idx:DIR."""
  rng = np.random.RandomState(0)
  os.makedirs(folder)
  for prefix in ('train', 't10k'):
    images = rng.randint(0, 256, (examples, 28, 28)).astype(np.uint8)
    labels = np.arange(examples, dtype=np.uint8) % 10
    for kind, array, magic in (('images-idx3', images, 2051), ('labels-idx1', labels, 2049)):
      with open(os.path.join(folder, f'{prefix}-{kind}-ubyte'), 'wb') as f:
        f.write(magic.to_bytes(4, 'big'))
        for size in array.shape:
          f.write(size.to_bytes(4, 'big'))
        f.write(array.tobytes())


class FlagfileTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    make_tiny_imagenet(os.path.join(cls.root, 'data', 'tiny-imagenet-200'))
    cls.idx_folder = os.path.join(cls.root, 'mnist_idx')
    make_idx_folder(cls.idx_folder)
    # MadryLab-like source checkpoints, where the flagfiles expect the fetched releases.
    cls.madry = {
        'madry_mnist': tf1_reference.build_madry_mnist_checkpoint(
            os.path.join(cls.root, 'madry_mnist'))[0],
        'madry_cifar10': tf1_reference.build_madry_cifar_checkpoint(
            os.path.join(cls.root, 'madry_cifar10'), units_per_stage=1)[0],
    }

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def overrides(self, values, binary):
    """Small and quick, and every path inside the temporary folder."""
    argv = ['--train_steps=2', '--checkpoint_every=2', '--batch_size=4', '--summary_every=1',
            '--validation_split=']
    for name, value in values.items():
      if name in ('model_dir', 'teacher') or (name == 'source' and value.startswith('runs/')):
        argv.append(f'--{name}={os.path.join(self.root, value)}')
      elif name == 'source':
        argv.append(f'--source={value.split(":")[0]}:{self.madry[value.split(":")[0]]}')
      elif name == 'dataset' and value.startswith('tiny_imagenet:'):
        argv.append(f'--dataset=tiny_imagenet:{os.path.join(self.root, value.split(":")[1])}')
      elif name == 'dataset' and value.startswith('idx:'):  # the real files: not in a clone
        argv.append(f'--dataset=idx:{self.idx_folder}')
      elif name == 'student_filters':
        argv.append('--student_filters=4,4,8,8')
      elif name == 'student_units_per_stage':
        argv.append('--student_units_per_stage=1')
      elif name == 'init_from':
        # Runs of one binary run side by side: the warm-up a run starts from may not be
        # there yet (--init_from itself is tested in test_reliability and test_training).
        argv.append('--init_from=')
      elif name in ('igam_start_step', 'penalty_start_step'):
        # The IGAM terms or the penalty from the first step: only their training step is
        # traced (the warm-up step before them is tested in test_igam and test_baselines).
        argv.append(f'--{name}=0')
    return argv

  def test_every_flagfile_names_its_binary_and_sets_known_flags(self):
    names = runnable_flagfiles()
    self.assertGreaterEqual(len(names), 30)
    for name in names:
      values, binary = read_flagfile(name)
      self.assertIn(binary, BINARY_ORDER, f'{name} has no "# Run: python -m igam_tf.X" line')
      self.assertIn('output_dir' if binary == 'demo' else 'model_dir', values, name)
      for flag in ('teacher', 'source', 'init_from'):  # a trained input: a flagfile's output
        if values.get(flag, '').startswith('runs/'):
          self.assertIn(values[flag], [read_flagfile(n)[0].get('model_dir') for n in names],
                        f'{name}: no flagfile writes its --{flag}')

  def test_flagfiles_alike_are_parsed_not_run_again(self):
    run, parse_only = flagfiles_to_run(runnable_flagfiles())
    # A zero weight turns a term off: it runs; 2.5 and 5 run as L_diff's weight 10 does.
    self.assertIn('table4/diff_0.cfg', run)
    self.assertContainsSubset(['table4/diff_2p5.cfg', 'table4/diff_5.cfg'], parse_only)
    # The MNIST and CIFAR-10 teachers are other models: both IGAM rows run, with their
    # teachers; the natural teachers are those models with other weights.
    self.assertContainsSubset(['table3/igam_mnist_cifar100.cfg', 'table3/igam_cifar10_cifar100.cfg',
                               'table3/teacher_mnist_cifar100.cfg',
                               'table3/teacher_cifar10_cifar100.cfg'], run)
    self.assertIn('table3/igam_mnist_natural_cifar100.cfg', parse_only)

  def test_rows_that_start_with_cross_entropy_can_share_a_warm_up(self):
    # Every IGAM row and gradient-norm control that trains with cross-entropy alone before
    # its terms start has a warm-up flagfile with the same settings for those steps, and
    # parses with its warm-up's --init_from and common/*_after_warm_up.cfg.
    names = runnable_flagfiles()
    warm_ups = {name: read_flagfile(name)[0] for name in names
                if os.path.basename(name).startswith('warm_up')}
    self.assertNotEmpty(warm_ups)
    runs = {'train_igam': [], 'train_baseline': []}
    for name in names:
      values, binary = read_flagfile(name)
      start = values.get('igam_start_step') or values.get('penalty_start_step')
      if not start or int(start) == 0:
        continue
      same = [warm_up for warm_up, warm in warm_ups.items()
              if int(warm['train_steps']) == int(start)
              and all(warm.get(k) == values.get(k) for k in CROSS_ENTROPY_SETTINGS)]
      self.assertNotEmpty(same, f'{name}: no warm-up flagfile trains its first {start} steps')
      after = 'igam' if binary == 'train_igam' else 'grad_norm'
      runs[binary].append([f'--flagfile=flags/{name}',
                           f'--flagfile=flags/common/{after}_after_warm_up.cfg',
                           f'--init_from={warm_ups[same[0]]["model_dir"]}'])
    self.assertNotEmpty(runs['train_igam'])
    self.assertNotEmpty(runs['train_baseline'])
    for binary, argvs in runs.items():
      result = subprocess.run(
          [sys.executable, '-c', _RUNNER,
           json.dumps({'binary': binary, 'runs': [(argv, True) for argv in argvs]})],
          cwd=REPO, capture_output=True, text=True, timeout=300)
      self.assertEqual(result.returncode, 0, f'{binary}:\n{result.stderr[-4000:]}')
      self.assertEqual(result.stdout.count('EXIT parsed'), len(argvs), result.stderr[-4000:])

  def test_every_flagfile_starts_its_run(self):
    jobs = {binary: [] for binary in BINARY_ORDER}
    run, parse_only = flagfiles_to_run(
        [name for name in runnable_flagfiles() if name not in RUN_ELSEWHERE])
    self.assertGreater(len(run), 2 * len(parse_only))
    for name in run + parse_only:
      values, binary = read_flagfile(name)
      output = os.path.join(self.root, values['model_dir'], 'model.json')
      jobs[binary].append(([f'--flagfile=flags/{name}'] + self.overrides(values, binary),
                           name in parse_only, output))
    for binary in BINARY_ORDER:
      # Runs of one binary never depend on each other: each worker takes every WORKERS-th.
      shards = [jobs[binary][i::WORKERS] for i in range(WORKERS) if jobs[binary][i::WORKERS]]
      workers = [subprocess.Popen(
          [sys.executable, '-c', _RUNNER,
           json.dumps({'binary': binary,
                       'runs': [(argv, parse_only) for argv, parse_only, _ in shard]})],
          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for shard in shards]
      for worker in workers:  # none is left running when an assertion fails
        self.addCleanup(_stop, worker)
      for worker, shard in zip(workers, shards):
        stdout, stderr = worker.communicate(timeout=900)
        self.assertEqual(worker.returncode, 0, f'{binary}:\n{stderr[-4000:]}')
        exits = re.findall(r'^RUN (\S+) EXIT (\S+)$', stdout, re.M)
        self.assertLen(exits, len(shard), stderr[-4000:])
        for (flagfile, code), (_, parse_only, output) in zip(exits, shard):
          if parse_only:
            self.assertEqual(code, 'parsed', flagfile)
            continue
          self.assertIn(code, ('0', 'None'), f'{flagfile} failed:\n{stderr[-4000:]}')
          self.assertTrue(os.path.exists(output), f'{flagfile} wrote no {output}')


if __name__ == '__main__':
  tf.test.main()
