"""A training job killed with SIGKILL (a preempted machine, an OOM kill) and started
again ends with the weights of a run never interrupted: one process, and a two-worker
job one of whose workers dies. The step it dies at is random; the seed is in every
failure message.
"""

import glob
import os
import random
import re
import tempfile
import time

import numpy as np
import tensorflow as tf

from igam_tf import model_io
from tests import worker_processes

# PGD-AT with augmentation: per-example random starts and crops must resume as they
# would have gone on.
TRAIN = ['--method=pgd_at', '--epsilon=0.1', '--pgd_steps=2', '--pgd_step_size=0.05',
         '--dataset=digits', '--classes=0,1,2', '--augment=madry',
         '--student_architecture=simple_cnn', '--student_filters=4,8', '--optimizer=momentum',
         '--learning_rate=0.05', '--train_steps=30', '--checkpoint_every=3', '--batch_size=16',
         '--validation_split=']


def _newest_checkpoint(model_dir):
  steps = [int(re.search(r'ckpt-(\d+)\.index$', path).group(1))
           for path in glob.glob(os.path.join(model_dir, 'checkpoints', 'ckpt-*.index'))]
  return max(steps, default=0)


def _wait_for_checkpoint(model_dir, step, processes, timeout=300):
  """Waits until `model_dir` holds a checkpoint at `step` or later; False if a process
  ended first or the time ran out."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if _newest_checkpoint(model_dir) >= step:
      return True
    if any(process.poll() is not None for process in processes):
      return False
    time.sleep(0.02)
  return False


def _weights(model_dir):
  model, _ = model_io.load_model(model_dir)
  return [w.numpy() for w in model.weights]


class KilledAndStartedAgainTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.seed = random.randrange(10**6)
    self.random = random.Random(self.seed)
    self.root = tempfile.mkdtemp()

  def uninterrupted(self):
    process = worker_processes.start('train_baseline', TRAIN + [f'--model_dir={self.root}/whole'],
                                     self.root)
    self.assertEqual(process.wait(timeout=300), 0, f'seed {self.seed}')
    return _weights(f'{self.root}/whole')

  def assert_same_weights(self, resumed, whole, tolerance):
    difference = max(float(np.abs(a - b).max()) for a, b in zip(resumed, whole))
    self.assertLess(difference, tolerance, f'seed {self.seed}: the resumed run differs by '
                                      f'{difference}')

  def test_one_process_killed_at_a_random_step(self):
    model_dir = f'{self.root}/killed'
    # Killed right after a random checkpoint, or a random moment after it (mid-step).
    step, delay = 3 * self.random.randint(1, 8), self.random.choice([0, 0.05, 0.2])
    process = worker_processes.start('train_baseline', TRAIN + [f'--model_dir={model_dir}'],
                                     self.root)
    try:
      self.assertTrue(_wait_for_checkpoint(model_dir, step, [process]),
                      f'seed {self.seed}: no checkpoint at step {step}')
      time.sleep(delay)
    finally:
      process.kill()
      process.wait()
    killed_at = _newest_checkpoint(model_dir)
    self.assertLess(killed_at, 30, f'seed {self.seed}: the run ended before it was killed')
    again = worker_processes.start('train_baseline', TRAIN + [f'--model_dir={model_dir}'],
                                   self.root)
    self.assertEqual(again.wait(timeout=300), 0, f'seed {self.seed}')
    with open(again.log_path) as log:
      self.assertRegex(log.read(), r'Resumed from .*ckpt-\d+')
    self.assert_same_weights(_weights(model_dir), self.uninterrupted(), 1e-6)

  def test_a_killed_worker_job_resumes_from_the_chiefs_checkpoint(self):
    model_dir = f'{self.root}/two'
    args = TRAIN + [f'--model_dir={model_dir}', '--strategy=multi_worker_mirrored']
    step = 3 * self.random.randint(1, 8)
    with worker_processes.Job('train_baseline', args, self.root) as job:
      self.assertTrue(_wait_for_checkpoint(model_dir, step, job.processes),
                      f'seed {self.seed}: no checkpoint at step {step}\n{job.logs()}')
      job.kill(1)
      # The chief cannot go on alone (its next all-reduce has no peer): the job is
      # started again, as a cluster scheduler restarts it.
      job.kill(0)
    killed_at = _newest_checkpoint(model_dir)
    self.assertLess(killed_at, 30, f'seed {self.seed}: the run ended before it was killed')
    with worker_processes.Job('train_baseline', args, self.root) as again:
      self.assertEqual(again.wait(), [0, 0], f'seed {self.seed}\n{again.logs()}')
    for worker in (0, 1):  # both read the chief's checkpoint
      self.assertRegex(again.log(worker),
                       rf'Resumed from {re.escape(model_dir)}/checkpoints/ckpt-\d+')
    # Two workers against one process: float sums in another order (test_multi_worker).
    self.assert_same_weights(_weights(model_dir), self.uninterrupted(), 2e-5)


if __name__ == '__main__':
  tf.test.main()
