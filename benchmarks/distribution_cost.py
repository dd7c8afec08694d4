"""What the distributed path costs: ms per training step on one device against
MirroredStrategy over the host CPU split into logical devices, and against
MultiWorkerMirroredStrategy over worker processes on 127.0.0.1, same global batch.

  python benchmarks/distribution_cost.py --cpu_replicas=2 --workers=2

On a CPU the replicas share the same cores, so this measures the overhead of the
distributed path (splitting batches, all-reducing gradients and BN statistics, the
discriminator's every-N-th update), not a speed-up. Each method trains through
`model.fit` on a repeated in-memory dataset, as the jobs do.
"""

import json
import os
import socket
import subprocess
import sys
import time

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from igam_tf import baselines  # pylint: disable=g-import-not-at-top
from igam_tf import distribution
from igam_tf.architectures import build_classifier
from igam_tf.discriminator import build_discriminator
from igam_tf.igam import IGAM
from igam_tf.teacher import Teacher


def define_flags():
  flags.DEFINE_integer('cpu_replicas', 2, 'Logical CPUs of the mirrored run.', lower_bound=2)
  flags.DEFINE_list('filters', ['16', '16', '32', '64'], 'Student (madry_resnet) widths.')
  flags.DEFINE_integer('batch_size', 64, 'Global batch size.')
  flags.DEFINE_integer('steps', 20, 'Timed steps per run (after 3 warm-up steps).')
  flags.DEFINE_integer('disc_every', 5, 'IGAM\'s discriminator schedule.')
  flags.DEFINE_integer('workers', 2, 'Worker processes of the multi-worker run (0: none).',
                       lower_bound=0)
  flags.DEFINE_bool('as_worker', False, 'Internal: this process is one of those workers.')


class _StepTimes(keras.callbacks.Callback):

  def __init__(self):
    super().__init__()
    self.times = []

  def on_train_batch_end(self, batch, logs=None):
    self.times.append(time.perf_counter())


def ms_per_step(strategy, method, f):
  shape = (28, 28, 1)
  rng = np.random.RandomState(0)
  images = rng.rand(512, *shape).astype(np.float32)
  labels = rng.randint(0, 5, 512)
  dataset = distribution.shard_by_data(tf.data.Dataset.from_tensor_slices(
      (images, labels)).batch(f.batch_size, drop_remainder=True).repeat())
  with strategy.scope():
    keras.utils.set_random_seed(0)
    student = build_classifier('madry_resnet', 5, shape, activation='softplus',
                               filters=tuple(int(w) for w in f.filters), units_per_stage=1)
    sgd = lambda: keras.optimizers.SGD(0.01, momentum=0.9)
    if method == 'standard':
      model = baselines.StandardTraining(student)
      model.compile(optimizer=sgd())
    else:
      teacher = Teacher(build_classifier('madry_mnist', 5, shape), 5)
      teacher(images[:1])
      model = IGAM(student, teacher, build_discriminator(3, 16), disc_every=f.disc_every)
      model.compile(sgd(), sgd())
    model.build((None,) + shape)  # as training.train does
    distribution.synchronize_batch_norm(model, strategy)
  timer = _StepTimes()
  warm_up = 3
  model.fit(dataset, epochs=1, steps_per_epoch=warm_up + f.steps, callbacks=[timer],
            verbose=0, shuffle=False)
  return 1000 * (timer.times[-1] - timer.times[warm_up - 1]) / f.steps


def _multi_worker_times(f):
  """{method: ms/step} of worker 0 of `f.workers` copies of this script (with TF_CONFIG)."""
  ports = []
  for _ in range(f.workers):
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      ports.append(s.getsockname()[1])
  cluster = [f'127.0.0.1:{port}' for port in ports]
  argv = [sys.executable, os.path.abspath(__file__), '--as_worker',
          *[f'--{name}={flags.FLAGS[name].serialize().split("=", 1)[1]}'
            for name in ('filters', 'batch_size', 'steps', 'disc_every')]]
  processes = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env=dict(os.environ, TF_CONFIG=json.dumps({
                                    'cluster': {'worker': cluster},
                                    'task': {'type': 'worker', 'index': i}})))
               for i in range(f.workers)]
  outputs = [process.communicate(timeout=1800)[0] for process in processes]
  return json.loads(outputs[0].strip().splitlines()[-1])


def main(argv):
  del argv
  f = flags.FLAGS
  if f.as_worker:
    strategy = distribution.get_strategy('multi_worker_mirrored')
    print(json.dumps({method: ms_per_step(strategy, method, f)
                      for method in ('standard', 'igam')}))
    return
  distribution.configure_cpu_replicas(f.cpu_replicas)
  strategies = {'default': distribution.get_strategy('default'),
                f'mirrored x{f.cpu_replicas} CPU': distribution.get_strategy(
                    'mirrored', f.cpu_replicas)}
  print(f'madry_resnet {",".join(f.filters)} student (1 unit/stage), 28x28x1, global batch '
        f'{f.batch_size}, {f.steps} steps; IGAM: Madry MNIST teacher, disc_every='
        f'{f.disc_every}; {os.cpu_count()} CPU cores')
  times = {method: {name: ms_per_step(strategy, method, f)
                    for name, strategy in strategies.items()}
           for method in ('standard', 'igam')}
  if f.workers:  # after the runs above, so that they do not share the cores
    for method, ms in _multi_worker_times(f).items():
      times[method][f'{f.workers} workers'] = ms
  for method, by_strategy in times.items():
    base = by_strategy['default']
    print(f'  {method:9s} ' + '  '.join(f'{name}: {ms:7.1f} ms/step ({ms / base:4.2f}x)'
                                       for name, ms in by_strategy.items()))


if __name__ == '__main__':
  define_flags()
  app.run(main)
