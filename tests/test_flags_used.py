"""No silently ignored option: every flag a training binary defines is read, and every
field of the settings it builds is used by the job (a flag parsed and then dropped, as
--disc_weight_decay once was, fails here)."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from unittest import mock

import tensorflow as tf

from igam_tf import experiments
from igam_tf import model_io
from igam_tf import settings
from igam_tf import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs a binary's main with its flags parsed and the job functions mocked, and prints
# the flags the binary defines and those main read.
_RUNNER = textwrap.dedent('''
    import importlib, json, sys
    from unittest import mock
    from absl import flags
    from igam_tf import experiments
    job = json.loads(sys.argv[1])
    module = importlib.import_module('igam_tf.' + job['binary'])
    module.define_flags()
    real = flags.FLAGS
    defined = sorted(flag.name for owner, owned in real.flags_by_module_dict().items()
                     if owner.startswith('igam_tf.') for flag in owned)
    read = set()

    class Recorder:
      def __getattr__(self, name):
        read.add(name)
        return getattr(real, name)

      def __getitem__(self, name):
        read.add(name)
        return real[name]

      def __contains__(self, name):
        return name in real

    for argv in job['contexts']:
      real.unparse_flags()
      real(['prog'] + argv)
      with mock.patch.object(flags, 'FLAGS', Recorder()), \\
           mock.patch.object(experiments, 'train_igam'), \\
           mock.patch.object(experiments, 'train_baseline'), \\
           mock.patch.object(experiments, 'finetune_teacher'):
        assert module.main(['prog']) in (0, None), argv
    print('FLAGS ' + json.dumps({'defined': defined, 'read': sorted(read)}))
''')

CONTEXTS = {
    'train_igam': [['--teacher=t', '--model_dir=m']],
    'finetune_teacher': [['--source=s', '--model_dir=m']],
    'train_baseline': [['--method=standard', '--model_dir=m'],
                       ['--method=pgd_at', '--model_dir=m'],
                       ['--method=grad_norm', '--model_dir=m'],
                       ['--method=finetune', '--source=s', '--model_dir=m']],
}


def watched(settings, reads, prefix=''):
  """A copy of a settings dataclass that records in `reads` each field read (dotted
  paths for nested settings)."""
  values = {}
  for field in dataclasses.fields(settings):
    value = getattr(settings, field.name)
    values[field.name] = (watched(value, reads, f'{prefix}{field.name}.')
                          if dataclasses.is_dataclass(value) else value)
  names = set(values)

  class Watched(type(settings)):

    def __getattribute__(self, name):
      if name in names:
        reads.add(prefix + name)
      return super().__getattribute__(name)

  return Watched(**values)


def leaf_fields(settings, prefix=''):
  for field in dataclasses.fields(settings):
    value = getattr(settings, field.name)
    if dataclasses.is_dataclass(value):
      yield from leaf_fields(value, f'{prefix}{field.name}.')
    else:
      yield prefix + field.name


class FlagsAreReadTest(tf.test.TestCase):

  def test_every_flag_of_every_training_binary_is_read(self):
    for binary, contexts in CONTEXTS.items():
      result = subprocess.run(
          [sys.executable, '-c', _RUNNER, json.dumps({'binary': binary, 'contexts': contexts})],
          cwd=REPO, capture_output=True, text=True, timeout=300)
      self.assertEqual(result.returncode, 0, result.stderr[-3000:])
      report = json.loads(result.stdout.split('FLAGS ', 1)[1])
      self.assertGreater(len(report['defined']), 15, binary)
      unread = set(report['defined']) - set(report['read'])
      self.assertEmpty(unread, f'{binary} defines flags it never reads: {sorted(unread)}')


class SettingsAreUsedTest(tf.test.TestCase):
  """Each job with every settings field watched; training itself is skipped (the fields
  it reads come from RunSettings, read before it)."""

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
    patches = [mock.patch.object(training, 'train'),
               mock.patch.object(training, 'check_run_config'),
               # It records every field by design; what counts is what the job uses.
               mock.patch.object(settings, 'recorded', return_value={})]
    for patch in patches:
      patch.start()
      self.addCleanup(patch.stop)
    self.reads = set()

  def watch(self, name, value):
    self.all_fields = getattr(self, 'all_fields', set()) | set(leaf_fields(value, name + '.'))
    return watched(value, self.reads, name + '.')

  def common(self, name):
    """The student, optimizer, data and run settings of a job, watched."""
    return dict(
        student=self.watch('student', settings.StudentSettings('simple_cnn', filters=(4, 8))),
        # Set, so the job has nothing to fill in from the architecture (which would copy it).
        optimizer=self.watch('optimizer', settings.OptimizerSettings('momentum', 0.1)),
        data=self.data(), run=self.run_settings(name))

  def data(self):
    return self.watch('data', settings.DataSettings('digits', classes=(0, 1, 2),
                                                       batch_size=8))

  def run_settings(self, name):
    return self.watch('run', settings.RunSettings(f'{self.root}/{name}', 2, 2))

  def run_job(self, job_function, job):
    # Reads when the settings were made (their checks) are not uses.
    self.reads.clear()
    job_function(job)

  def assert_all_used(self, allowed_unused=()):
    unused = self.all_fields - self.reads - {f'baseline.{f}' for f in allowed_unused}
    self.assertEmpty(unused, f'settings built from flags but never used: {sorted(unused)}')

  def test_finetune_teacher_and_igam_use_every_setting(self):
    source = f'{self.root}/source'
    spec = model_io.classifier_spec('simple_cnn', 3, (8, 8, 1), filters=(4, 8))
    model_io.save_model(source, model_io.build_model(spec), spec)
    self.run_job(experiments.finetune_teacher, settings.FinetuneJob(
        source, 'resize:8', data=self.data(), run=self.run_settings('teacher')))
    self.assert_all_used()
    self.run_job(experiments.train_igam, settings.IGAMJob(
        f'{self.root}/teacher', igam=self.watch('igam', settings.IGAMSettings()),
        **self.common('igam')))
    self.assert_all_used()

  def test_each_baseline_uses_its_settings(self):
    method_fields = {'pgd_at': {'epsilon', 'pgd_steps', 'pgd_step_size', 'pgd_bn'},
                     'grad_norm': {'penalty_weight', 'gradient_of', 'penalty_start_step',
                                   'double_backprop', 'finite_difference_step'}}
    every = set().union(*method_fields.values())
    self.assertEqual(every, {f.name for f in dataclasses.fields(settings.BaselineSettings)})
    for method in ('standard', 'pgd_at', 'grad_norm'):
      self.all_fields = set()
      self.run_job(experiments.train_baseline, settings.BaselineJob(
          method, self.watch('baseline', settings.BaselineSettings()),
          **self.common(method)))
      self.assert_all_used(allowed_unused=every - method_fields.get(method, set()))


if __name__ == '__main__':
  tf.test.main()
