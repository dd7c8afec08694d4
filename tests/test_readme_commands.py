"""Every command of README.md's fenced blocks runs, as written, in the README's order.

Each `python -m ...` command (and `saved_model_cli`, installed with TensorFlow) runs as
a subprocess in a temporary folder, so the README's relative paths (runs/demo, models/,
exports/) resolve there, with shrink flags appended from SHRINK (absl takes a flag's last
value). What cannot be had offline is replaced the standard way: the MadryLab release
zips are built from tests/tf1_reference's checkpoints and served on 127.0.0.1 (appended
--url), and a TFDS dataset (cifar10) is tfds.testing.mock_data inside the command's own
process. The CIFAR-10 checkpoint served is then what the README's export turns into
exports/madry_cifar10 (its logits checked against the TF1 graph's) and what its evaluate
attacks: the README's chain, end to end. Set-up lines are listed in NOT_RUN; a command
that is neither run nor listed fails the test, so a new README command cannot go untested.
"""

import dataclasses
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import tensorflow as tf

from tests import release_server
from tests import tf1_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, 'README.md')
SHELL_LANGUAGES = ('sh', 'bash', 'shell', 'console')
# Words that begin a command: a block without a shell tag must hold none of them.
COMMAND_WORDS = ('python', 'python3', 'pip', 'git', 'saved_model_cli', 'tensorboard', 'tfds',
                 'bazel', 'pytest', 'cd', 'export', 'bash', 'sh', 'curl', 'wget')

# README commands that are not run here, and why. The test fails if one leaves the README.
NOT_RUN = {
    'git clone <this repository> igam-tf && cd igam-tf':
        'set-up: the test runs inside a clone',
    'python -m pip install -r requirements.txt':
        'set-up: .ci/run installs requirements.txt before the tests',
    'python -m pytest -q':
        'the test suite itself, this test included',
    'python -m igam_tf.train_baseline --flagfile=flags/table3/warm_up_cifar100.cfg':
        'a full-size table run (GPUs, CIFAR-100); test_flagfiles runs or parses each flagfile',
    'python -m igam_tf.train_igam --flagfile=flags/table3/igam_cifar10_cifar100.cfg '
    '--flagfile=flags/common/igam_after_warm_up.cfg --init_from=runs/table3/warm_up':
        'a full-size table run; test_flagfiles parses each row with its warm-up\'s flags',
    'python -m igam_tf.train_baseline --flagfile=flags/table3/grad_norm_cifar100.cfg '
    '--flagfile=flags/common/grad_norm_after_warm_up.cfg --init_from=runs/table3/warm_up':
        'a full-size table run; test_flagfiles parses each control with its warm-up\'s flags',
}

# The datasets that need TFDS (igam_tf/data.py's TFDS_DATASETS; not imported, so that
# this list is what the test promises): replaced by tfds.testing.mock_data.
TFDS_DATASETS = ('mnist', 'fashion_mnist', 'cifar10', 'cifar100')
MOCK_EXAMPLES = 8
EVALUATE_EXAMPLES = 2
# Runs `python -m MODULE ARGS...` (sys.argv[1:]) with TFDS datasets generated instead of read.
_MOCK_RUNNER = """
import runpy, sys
import tensorflow_datasets as tfds
sys.argv = sys.argv[1:]
with tfds.testing.mock_data(num_examples=%d):
  runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
""" % MOCK_EXAMPLES
# What the saved_model_cli console script runs: found from TensorFlow's own entry point.
_ENTRY_POINT_RUNNER = """
import importlib, sys
module, _, function = sys.argv.pop(1).partition(':')
sys.exit(getattr(importlib.import_module(module), function)())
"""

# Served as the MadryLab releases; the folders are those the release zips hold.
RELEASE_FOLDERS = {
    'mnist_adv_trained': 'models/adv_trained',
    'mnist_natural': 'models/natural',
    'cifar10_adv_trained': 'models/adv_trained',
    'cifar10_natural': 'models/naturally_trained',
}
CIFAR_FILTERS = (16, 16, 32, 64)  # a small MadryResNet: the release's layout, not its width


def _fetch_shrink(flags, base_url):
  url = [f'--url={base_url}/{flags["model"]}.zip']
  # The MNIST releases carry MadryLab's published git blob id, which a zip built here
  # cannot have: fetch refuses it unless told to use it anyway (and says UNVERIFIED).
  return url + (['--allow_unverified'] if flags['model'].startswith('mnist_') else [])


@dataclasses.dataclass(frozen=True)
class Binary:
  shrink: object  # flags appended: a list, or a function (flags, base URL) -> list
  default_dataset: str | None = None  # the --dataset it reads when none is given


# One row per binary the README runs: the flags that make its command small.
SHRINK = {
    # Few steps; two cheap attacks (the demo attacks all 269 target test images, and no
    # flag shrinks that); its masking checks (~90 s per model even on 4 examples) skipped.
    'igam_tf.demo': Binary(['--teacher_steps=2', '--finetune_steps=2', '--student_steps=2',
                            '--batch_size=8', '--attacks=clean,fgsm', '--masking_examples=0']),
    'madry_models.fetch': Binary(_fetch_shrink),
    'igam_tf.export': Binary([]),
    # Few examples; cheap attacks instead of the README's: its third command's list costs
    # ~40 s per model even on one example (each attack's loop traced per model, Square's
    # 5000 queries on any point left), the masking checks ~90 s, and runs/demo holds 9
    # models. The README's --attacks still pass the binary's own validators
    # (test_readme_flags_parse); the attacks are tested in test_attacks.py and
    # test_autoattack.py, the masking checks in test_evaluate.py.
    'igam_tf.evaluate': Binary([f'--num_examples={EVALUATE_EXAMPLES}',
                                f'--batch_size={EVALUATE_EXAMPLES}', '--attacks=clean,fgsm',
                                '--masking_checks=false'], default_dataset='cifar10'),
    'igam_tf.visualize': Binary(['--num_images=2'], default_dataset='cifar10'),
}


def command_blocks(text):
  """[(language, [command, ...])] of every fenced block of `text`, in order: each line of a
  block with its `\\` continuations joined."""
  blocks = []
  for language, body in re.findall(r'^```(\w*)[^\n]*\n(.*?)^```', text, re.M | re.S):
    commands, pending = [], ''
    for line in body.splitlines():
      if line.rstrip().endswith('\\'):
        pending += line.rstrip()[:-1] + ' '
        continue
      commands.append(pending + line)
      pending = ''
    if pending:
      commands.append(pending)
    blocks.append((language, [c.strip() for c in commands if c.strip()]))
  return blocks


def readme_commands():
  """(commands of the shell blocks as argv lists, comments dropped, in order; lines of
  other blocks that look like commands)."""
  with open(README) as f:
    blocks = command_blocks(f.read())
  commands, stray = [], []
  for language, lines in blocks:
    for line in lines:
      if language in SHELL_LANGUAGES:
        argv = shlex.split(line, comments=True)
        if argv:
          commands.append(argv)
      elif line.split()[0] in COMMAND_WORDS:  # prose such as the layout: no shell quoting
        stray.append(line)
  return commands, stray


def parse_flags(args):
  """{name: value} of `--name=value` and `--name value` arguments; the last one wins."""
  flags, args = {}, list(args)
  while args:
    arg = args.pop(0)
    if arg.startswith('--'):
      name, equals, value = arg[2:].partition('=')
      if not equals:
        value = args.pop(0) if args and not args[0].startswith('-') else True
      flags[name] = value
  return flags


def saved_model_cli_entry_point():
  """'module:function' of TensorFlow's saved_model_cli console script, or None."""
  for point in importlib.metadata.distribution('tensorflow').entry_points:
    if point.group == 'console_scripts' and point.name == 'saved_model_cli':
      return point.value
  return None


def table_rows(stdout):
  """Names of the models in the Markdown tables that `stdout` prints."""
  return {m for m in re.findall(r'^\| (\S+) \|', stdout, re.M) if m not in ('Model', '---')}


def expected_models(flags, cwd):
  """The model names evaluate or visualize report for these flags."""
  if 'saved_model' in flags:
    return {os.path.basename(os.path.normpath(flags['saved_model']))}
  folder = os.path.join(cwd, flags['model_dir'])
  if os.path.exists(os.path.join(folder, 'model.json')):
    return {os.path.basename(os.path.normpath(folder))}
  return {name for name in os.listdir(folder) if os.path.exists(
      os.path.join(folder, name, 'model.json')) or os.path.isdir(
          os.path.join(folder, name, 'saved_model'))}


class ReadmeCommandsTest(tf.test.TestCase):

  def test_every_command_is_run_or_listed(self):
    commands, stray = readme_commands()
    self.assertEmpty(stray, 'commands in a fenced block without a shell tag: tag it sh')
    texts = [' '.join(argv) for argv in commands]
    for text in NOT_RUN:
      self.assertIn(text, texts, 'NOT_RUN lists a command the README no longer has')
    for argv, text in zip(commands, texts):
      if text in NOT_RUN:
        continue
      if argv[:2] == ['python', '-m']:
        self.assertIn(argv[2], SHRINK, f'README runs {text}: add its binary to SHRINK')
      else:
        self.assertEqual(argv[0], 'saved_model_cli', f'README command {text!r} is neither '
                         'run by this test nor listed in NOT_RUN')
    self.assertGreaterEqual(len(commands) - len(NOT_RUN), 10)

  def test_readme_flags_parse(self):
    """A README command whose own flag value a shrink flag replaces (evaluate's --attacks)
    still passes the binary's flag parsing and validators with its flags as written."""
    commands, _ = readme_commands()
    by_module = {}
    for argv in commands:
      if argv[:2] != ['python', '-m'] or ' '.join(argv) in NOT_RUN:
        continue
      flags, binary = parse_flags(argv[3:]), SHRINK[argv[2]]
      shrink = (binary.shrink(flags, 'http://127.0.0.1:0')
                if callable(binary.shrink) else binary.shrink)
      if flags.keys() & parse_flags(shrink).keys():
        by_module.setdefault(argv[2], []).append(argv[3:])
    self.assertIn('igam_tf.evaluate', by_module)
    script = ('import importlib, json, sys\n'
              'from absl import flags\n'
              'module = importlib.import_module(sys.argv[1])\n'
              'module.define_flags()\n'
              'for args in json.loads(sys.argv[2]):\n'
              '  flags.FLAGS.unparse_flags()\n'
              '  flags.FLAGS([sys.argv[1]] + args)\n'
              '  print("PARSED", flush=True)\n')
    for module, runs in by_module.items():
      result = subprocess.run([sys.executable, '-c', script, module, json.dumps(runs)],
                              cwd=REPO, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
      self.assertEqual(result.returncode, 0, f'{module}: {result.stderr[-3000:]}')
      self.assertEqual(result.stdout.count('PARSED'), len(runs), module)

  def test_readme_commands_run_in_order(self):
    commands, _ = readme_commands()
    root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, root, ignore_errors=True)
    os.symlink(os.path.join(REPO, 'flags'), os.path.join(root, 'flags'))
    build = os.path.join(root, '.build')  # outside the README's paths
    cifar_prefix, self.cifar_images, self.cifar_logits = (
        tf1_reference.build_madry_cifar_checkpoint(os.path.join(build, 'cifar10'),
                                                   filters=CIFAR_FILTERS, units_per_stage=1))
    mnist_prefix = tf1_reference.build_madry_mnist_checkpoint(os.path.join(build, 'mnist'))[0]
    checkpoints = {'mnist': os.path.dirname(mnist_prefix),
                   'cifar10': os.path.dirname(cifar_prefix)}
    server = release_server.ReleaseServer({
        f'/{name}.zip': release_server.release_zip(checkpoints[name.split('_')[0]], folder)
        for name, folder in RELEASE_FOLDERS.items()})
    self.addCleanup(server.close)
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='3',
               **release_server.NO_PROXY)
    timings = []
    for argv in commands:
      text = ' '.join(argv)
      if text in NOT_RUN:
        continue
      with self.subTest(command=text):
        began = time.time()
        if argv[0] == 'saved_model_cli':
          entry_point = saved_model_cli_entry_point()
          self.assertIsNotNone(entry_point, 'TensorFlow installs no saved_model_cli')
          run = [sys.executable, '-c', _ENTRY_POINT_RUNNER, entry_point, *argv[1:]]
          module, flags = 'saved_model_cli', parse_flags(argv[1:])
        else:
          module, args = argv[2], argv[3:]
          binary = SHRINK[module]
          flags = parse_flags(args)
          shrink = binary.shrink(flags, server.url('')) if callable(binary.shrink) else binary.shrink
          if flags.get('dataset', binary.default_dataset) in TFDS_DATASETS:
            run = [sys.executable, '-c', _MOCK_RUNNER, module, *args, *shrink]
          else:
            run = [sys.executable, '-m', module, *args, *shrink]
          flags = parse_flags(args + shrink)
        result = subprocess.run(run, cwd=root, env=env, capture_output=True, text=True,
                                timeout=900)
        timings.append((round(time.time() - began, 1), text))
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, f'{text}\n{output[-4000:]}')
        self.assertNotIn('Traceback', output, f'{text}\n{output[-4000:]}')
        getattr(self, 'check_' + module.split('.')[-1])(flags, result.stdout, root)
    print('\nREADME commands (seconds):\n' + '\n'.join(f'{s:7.1f}  {t}' for s, t in timings))
    self.assertLen(timings, len(commands) - len(NOT_RUN))

  # What each binary promises, checked after its command ran (flags: with the shrink).

  def check_demo(self, flags, stdout, root):
    output = os.path.join(root, flags['output_dir'])
    with open(os.path.join(output, 'results.json')) as f:
      report = json.load(f)
    models = report.keys() - {'settings', 'warnings', 'autoattack_runs'}
    self.assertLen(models, 6)
    for name in models:
      self.assertEqual(set(report[name]), {'clean', 'fgsm', 'worst_case'}, name)
      self.assertTrue(os.path.exists(os.path.join(output, name, 'saved_model',
                                                  'saved_model.pb')), name)
    self.assertTrue(os.path.exists(os.path.join(output, 'results.md')))
    self.assertPng(os.path.join(output, 'input_gradients.png'))
    self.assertIn('| igam |', stdout)

  def check_fetch(self, flags, stdout, root):
    prefix = stdout.strip().splitlines()[-1]
    extracted = os.path.join(os.path.abspath(os.path.join(root, flags['dir'])), flags['model'],
                             RELEASE_FOLDERS[flags['model']])
    self.assertEqual(os.path.dirname(prefix), extracted)
    self.assertTrue(os.path.exists(prefix + '.index'), prefix)
    self.assertTrue(os.path.exists(os.path.join(
        root, flags['dir'], 'downloads', flags['model'] + '.zip')))
    if flags['model'].startswith('mnist_'):
      self.assertIn('UNVERIFIED', stdout)

  def check_export(self, flags, stdout, root):
    export_dir = os.path.join(root, flags['export_dir'])
    self.assertTrue(os.path.exists(os.path.join(export_dir, 'saved_model.pb')))
    self.assertIn('serving_default', stdout)
    if flags['model'] == 'madry_cifar10':  # the checkpoint fetched from the served release
      self.assertIn('filters 16,16,32,64, 1 units per stage', stdout)
      served = tf.saved_model.load(export_dir).signatures['serving_default']
      logits = served(images=tf.constant(self.cifar_images))['logits'].numpy()
      self.assertLess(tf1_reference.relative_error(logits, self.cifar_logits), 1e-4)

  def check_saved_model_cli(self, flags, stdout, root):
    self.assertTrue(os.path.isdir(os.path.join(root, flags['dir'])))
    for signature in ('serving_default', 'input_gradients'):
      self.assertIn(f"signature_def['{signature}']", stdout)

  def check_evaluate(self, flags, stdout, root):
    models = expected_models(flags, root)
    self.assertNotEmpty(models)
    self.assertEqual(table_rows(stdout), models, stdout[-3000:])
    dataset = flags.get('dataset', SHRINK['igam_tf.evaluate'].default_dataset)
    self.assertIn(f'Evaluating {len(models)} model(s) on {EVALUATE_EXAMPLES} examples of '
                  f'{dataset}:test', stdout)
    if 'output' in flags:
      path = os.path.join(root, flags['output'])
      self.assertEndsWith(path, '.json', 'check the other --output forms here')
      with open(path) as f:
        report = json.load(f)
      self.assertEqual(report['settings']['examples'], EVALUATE_EXAMPLES)
      self.assertEqual(set(report['settings']['models']), models)
      for name in models:
        row = report if len(models) == 1 else report[name]
        self.assertEqual(set(row) & {'clean', 'fgsm', 'worst_case'},
                         {'clean', 'fgsm', 'worst_case'}, name)
      self.assertTrue(os.path.exists(path[:-len('.json')] + '.md'))

  def check_visualize(self, flags, stdout, root):
    self.assertPng(os.path.join(root, flags['output']))
    for entry in flags['models'].split(','):
      self.assertIn(f'  {entry.split("=")[0]}: input gradients of', stdout)

  def assertPng(self, path):  # pylint: disable=invalid-name
    with open(path, 'rb') as f:
      self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n', path)


if __name__ == '__main__':
  tf.test.main()
