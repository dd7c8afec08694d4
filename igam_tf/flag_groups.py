"""Flags from settings, and what every binary does with its flags and errors.

Only binaries import this module (flags are defined under their `__main__`). A
binary defines the flags of its job's settings class (`define_job_flags`, from the
options igam_tf.settings declares) and builds its one settings object from the
parsed values (`job_from_flags`, which takes them as an argument and never reads
the global FLAGS itself). Flag values that make no sense (a negative rate or weight,
an epsilon outside [0, 1], one class) are refused when the flags are parsed, before
any work; `parse_flags` reports them as a one-line error.
"""

import dataclasses
import functools
import os
import re
import runpy
import sys
import tempfile
import typing

from absl import app
from absl import flags

from igam_tf import attacks
from igam_tf import training


def register_attack_names(name='attacks'):
  """Refuses, when the flags are parsed, an attack name the grammar does not know."""
  def check(names):
    for attack in names:
      try:
        attacks.parse_attack(attack)
      except ValueError as e:
        raise flags.ValidationError(f'--{name}: {e}') from None
    return True
  flags.register_validator(name, check)


def define_job_flags(job_class):
  """Defines a flag for each option of `job_class` and its groups (see igam_tf.settings),
  with its help, default, choices, bounds and checks; an option whose flag this binary
  already defined is skipped (train_baseline's finetune shares the baselines' data and
  run flags). A job with a run group also gets --model_dir required and its checks."""
  defined_run = False
  for name, field, default, owner in _options(job_class):
    if name in flags.FLAGS:
      continue
    _define_flag(name, field, default, owner)
    defined_run |= name == 'model_dir'
  if defined_run:
    flags.mark_flag_as_required('model_dir')
    flags.register_multi_flags_validator(
        ['train_steps', 'checkpoint_every'],
        lambda v: v['train_steps'] % v['checkpoint_every'] == 0,
        message='--train_steps must be a multiple of --checkpoint_every')
    flags.register_validator('resume_with_changes', _check_resume_with_changes)


def job_from_flags(job_class, values):
  """The settings object `job_class` from parsed flag `values`: each option from its flag
  (converted to the option's type), each group from its prefixed flags; an option this
  binary has no flag for keeps its default. A --model_dir that cannot be written is
  refused here, before any work."""
  job = _from_flags(job_class, values, '')
  if getattr(job, 'run', None) is not None:
    check_writable('model_dir', job.run.model_dir)
  return job


def refuse_unused_flags(job_class, other_job_classes, values, reason, chooser):
  """Refuses flags given (on the command line or in a flagfile) that this binary defines
  for `other_job_classes` but `job_class` does not read: they would be ignored silently.
  `reason` says why, e.g. '--method=finetune'; `chooser` is the flag that chose the job."""
  used = {name for name, *_ in _options(job_class)} | {chooser}
  other = {name for job in other_job_classes for name, *_ in _options(job)}
  unused = sorted(name for name in other - used if values[name].present)
  if unused:
    raise ValueError(f'{", ".join("--" + name for name in unused)} '
                     f'{"is" if len(unused) == 1 else "are"} not used by {reason}: leave '
                     f'{"it" if len(unused) == 1 else "them"} unset')


def _default(settings, field):
  """A field's default: its value in a settings instance, or the class's default."""
  if not isinstance(settings, type):
    return getattr(settings, field.name)
  if field.default_factory is not dataclasses.MISSING:
    return field.default_factory()
  return field.default


def _options(settings, prefix='', owner='the student'):
  """(flag name, field, default, owner) of each option under a settings class or instance."""
  for field in dataclasses.fields(settings):
    if 'prefix' in field.metadata:  # a group: its own defaults, prefix and owner
      yield from _options(_default(settings, field), prefix + field.metadata['prefix'],
                          field.metadata['owner'])
    elif field.metadata.get('flag'):
      yield prefix + field.name, field, _default(settings, field), owner


def _from_flags(settings, values, prefix):
  changes = {}
  for field in dataclasses.fields(settings):
    name = prefix + field.name
    if 'prefix' in field.metadata:
      changes[field.name] = _from_flags(_default(settings, field), values,
                                        prefix + field.metadata['prefix'])
    elif field.metadata.get('flag') and name in values:
      changes[field.name] = _converted(field, values[name].value)
  if isinstance(settings, type):
    return settings(**changes)
  return dataclasses.replace(settings, **changes)


def _converted(field, value):
  """A flag's value as the option's type: a list flag gives a tuple of its item type."""
  if typing.get_origin(field.type) is not tuple or value is None:
    return value
  item = typing.get_args(field.type)[0]
  try:
    return tuple(item(v) for v in value)
  except ValueError:
    raise ValueError(f'takes {"integers" if item is int else "numbers"}, got '
                     f'{",".join(value)}') from None


def _define_flag(name, field, default, owner):
  meta = field.metadata
  help_text = meta['help'].replace('{owner}', owner)
  if default is None:
    help_text += meta['unset_help']
  bounds = dict(lower_bound=meta['lower_bound'], upper_bound=meta['upper_bound'])
  if meta['choices']:
    flags.DEFINE_enum(name, default, list(meta['choices']), help_text)
  elif typing.get_origin(field.type) is tuple:
    flags.DEFINE_list(name, [str(v) for v in default], help_text)
  elif field.type is int:
    flags.DEFINE_integer(name, default, help_text, **bounds)
  elif field.type is float:
    flags.DEFINE_float(name, default, help_text, **bounds)
  elif field.type is bool:
    flags.DEFINE_boolean(name, default, help_text)
  else:
    flags.DEFINE_string(name, default, help_text)
  if typing.get_origin(field.type) is tuple or meta['check']:
    flags.register_validator(name, functools.partial(_check_option, name, field))


def _check_option(name, field, value):
  try:
    value = _converted(field, value)
    if field.metadata['check'] and value is not None:
      field.metadata['check'](value)
  except ValueError as e:
    raise flags.ValidationError(f'--{name} {e}') from None
  return True


def _check_resume_with_changes(names):
  unknown = [name for name in names if name not in flags.FLAGS]
  if unknown:
    raise flags.ValidationError(
        f'--resume_with_changes names {", ".join(unknown)}, which '
        f'{"is not a flag" if len(unknown) == 1 else "are not flags"} of this binary: it '
        f'takes flag names without dashes, e.g. learning_rate,train_steps')
  try:
    training.check_resume_with_changes(names)
  except training.TrainingError as e:
    raise flags.ValidationError(str(e)) from None
  return True


def check_writable(flag, value, folder=None):
  """Refuses, before any work, a --`flag`=`value` whose `folder` (the value itself by
  default) cannot be written: a file in the way, or a place where no file can be made.
  Creates nothing."""
  folder = os.path.abspath(folder or value)
  while not os.path.isdir(folder):
    if os.path.exists(folder):
      raise ValueError(f'--{flag}={value}: {folder} is a file, not a folder')
    folder = os.path.dirname(folder)
  try:
    with tempfile.TemporaryFile(dir=folder):
      pass
  except OSError as e:
    raise ValueError(f'--{flag}={value}: cannot write in {folder} ({e.strerror})') from None


def parse_flags(argv):
  """app.run's flag parser: a bad flag value ends the binary with a one-line error
  (absl's names the flag) before any work."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = '; '.join(line for line in str(e).splitlines() if line.strip())
    message = message.removeprefix('ERROR:: ')  # absl's own, for a missing flagfile
    # "flag --x=['a']: --x takes ...": the value once, as given, not as a Python list.
    message = re.sub(r'^flag --(\w+)=.*?: (?=--\1\b)', '', message)
    print(f'ERROR: {message}', file=sys.stderr)
    sys.exit(1)


def run_binary(module_name, define_flags, main):
  """Runs a binary: `python -m MODULE`, or its console script (pyproject.toml), which
  runs the module as `python -m` does so that --help lists the binary's own flags."""
  if module_name != '__main__':
    runpy.run_module(module_name, run_name='__main__', alter_sys=True)
    return
  define_flags()
  app.run(main, flags_parser=parse_flags)


def reports_errors(main):
  """Bad input (a flag, a file, a checkpoint) or a diverged run ends the binary with a
  one-line error instead of a traceback."""
  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except (ValueError, training.TrainingError) as e:
      print(f'ERROR: {e}', file=sys.stderr)
      return 1
    except OSError as e:  # a file or folder that cannot be read or written; it names it
      print(f'ERROR: {e.strerror}: {e.filename}' if e.filename else f'ERROR: {e}',
            file=sys.stderr)
      return 1
  return wrapped
