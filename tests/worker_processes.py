"""Starts a binary as the workers of one multi-worker job on 127.0.0.1, as a user starts
it on several machines: the same command in each process, with the cluster and the
process's place in it in TF_CONFIG (--strategy=multi_worker_mirrored).

Each process has its own temporary folder (TMPDIR), so a test can check that a worker
left nothing behind, and every process is killed when the test is done with it.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(count):
  """`count` ports on 127.0.0.1 that nothing listens on now."""
  with contextlib.ExitStack() as stack:
    sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
    for s in sockets:
      s.bind(('127.0.0.1', 0))
    return [s.getsockname()[1] for s in sockets]


def start(binary, args, log_dir, *, workers=None, index=None, tmp_dir=None):
  """Starts `python -m igam_tf.<binary> args`, logging to log_dir/<binary>_<index>.log.
  With `workers` (addresses), as worker `index` of that cluster; otherwise alone."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('TF_CONFIG', None)
  if workers:
    env['TF_CONFIG'] = json.dumps({'cluster': {'worker': workers},
                                   'task': {'type': 'worker', 'index': index}})
  if tmp_dir:
    env['TMPDIR'] = tmp_dir
  log = open(os.path.join(log_dir, f'{binary}_{index if workers else "alone"}.log'), 'w')
  process = subprocess.Popen([sys.executable, '-m', f'igam_tf.{binary}', *args], cwd=REPO,
                             env=env, stdout=log, stderr=subprocess.STDOUT)
  process.log_path = log.name
  log.close()
  return process


class Job:
  """One multi-worker job: `count` processes of `binary`, each with its own TMPDIR under
  `root` (`tmp_dirs`), and worker i with `args` then `per_worker[i]` (if given). Use it
  as a context manager: every process is killed at exit."""

  def __init__(self, binary, args, root, count=2, per_worker=None):
    self.binary, self.root, self.count = binary, root, count
    self.args = [list(args) + list(extra) for extra in (per_worker or [[]] * count)]
    self.tmp_dirs = [tempfile.mkdtemp(dir=root, prefix=f'tmp_{i}_') for i in range(count)]
    self.processes = []

  def __enter__(self):
    addresses = [f'127.0.0.1:{port}' for port in free_ports(self.count)]
    self.processes = [start(self.binary, self.args[i], self.root, workers=addresses, index=i,
                            tmp_dir=self.tmp_dirs[i]) for i in range(self.count)]
    return self

  def __exit__(self, *unused_exc):
    for process in self.processes:
      if process.poll() is None:
        process.kill()
      process.wait()

  def wait(self, timeout=300):
    """Waits for every process; returns their exit codes (None: still running at
    the timeout, then killed)."""
    codes = []
    for process in self.processes:
      try:
        codes.append(process.wait(timeout=timeout))
      except subprocess.TimeoutExpired:
        codes.append(None)
    self.__exit__()
    return codes

  def kill(self, index):
    """SIGKILL to worker `index`."""
    self.processes[index].send_signal(signal.SIGKILL)
    self.processes[index].wait()

  def log(self, index):
    with open(self.processes[index].log_path) as f:
      return f.read()

  def logs(self):
    return '\n'.join(f'--- worker {i} ---\n{self.log(i)[-3000:]}' for i in range(self.count))
