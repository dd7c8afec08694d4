"""Runs one binary several times in one process, each run as `python -m igam_tf.X` runs it.

Starting Python with TensorFlow costs seconds (3.5 s here, about twice that on CI); a
test that sends a binary a dozen bad flag sets pays it once with `run_refused`. Each run
goes through the binary's own `app.run(main, flags_parser=...)` with a fresh parse of its
argv, and gets its own exit status, stdout and stderr (captured at the file descriptors,
so absl's logging and TensorFlow's C++ messages are in them). For runs that stop before
any work: a run that trains leaves state in the process (Keras names, tf.distribute), so
it goes through `python -m` as a user runs it.
"""

import dataclasses
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUNNER = '''
import importlib, json, os, sys, tempfile, traceback
from absl import app, flags
job = json.loads(sys.argv[1])
module = importlib.import_module(job['module'])
module.define_flags()
flags_parser = importlib.import_module('igam_tf.flag_groups').parse_flags
results = []
for argv in job['runs']:
  flags.FLAGS.unparse_flags()
  with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
    sys.stdout.flush(); sys.stderr.flush()
    kept = os.dup(1), os.dup(2)
    os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
    try:
      app.run(module.main, argv=[job['module']] + argv, flags_parser=flags_parser)
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:  # what Python prints for an uncaught exception, and its status
      traceback.print_exc()
      code = 1
    finally:
      sys.stdout.flush(); sys.stderr.flush()
      os.dup2(kept[0], 1); os.dup2(kept[1], 2)
      os.close(kept[0]); os.close(kept[1])
    out.seek(0); err.seek(0)
    results.append([code, out.read(), err.read()])
print('RESULTS ' + json.dumps(results))
'''


@dataclasses.dataclass
class Run:
  """What subprocess.run gives for one run."""
  returncode: int
  stdout: str
  stderr: str


def run_refused(binary, runs):
  """[Run] of `python -m igam_tf.<binary> ARGV` for each ARGV of `runs`, in one process."""
  job = {'module': f'igam_tf.{binary}', 'runs': [list(argv) for argv in runs]}
  process = subprocess.run([sys.executable, '-c', _RUNNER, json.dumps(job)], cwd=REPO,
                           capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  lines = [line for line in process.stdout.splitlines() if line.startswith('RESULTS ')]
  if process.returncode or len(lines) != 1:
    raise AssertionError(f'The runner of {binary} failed:\n{process.stderr[-3000:]}')
  return [Run(*result) for result in json.loads(lines[0][len('RESULTS '):])]
