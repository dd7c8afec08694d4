"""Several worker processes as one job (--strategy=multi_worker_mirrored, the cluster the
TF_CONFIG environment variable names): the strategy (`make_strategy`), which worker
writes, and the checks that the workers run the same job.

Every worker runs the same job on its share of each batch and takes part in every save,
since reading a variable synchronized across replicas is a collective; but only the
chief writes the run's files: the others write into a temporary folder that is removed
after (`writable_folder`), and read the chief's once it is there (`barrier`).
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile

from absl import logging
from keras.src.backend.tensorflow import trainer as keras_tf_trainer
import tensorflow as tf


def make_strategy():
  """MultiWorkerMirroredStrategy over the workers TF_CONFIG names (checked first; without
  it, this process alone), with Keras's fit made to run under it."""
  _check_tf_config()
  if os.environ.get('TF_CONFIG'):  # it waits for every worker to start: say so
    config = json.loads(os.environ['TF_CONFIG'])
    workers = sum(len(tasks) for tasks in config['cluster'].values())
    logging.info('%s %d of TF_CONFIG\'s %d workers: waiting for all of them to connect',
                 config['task']['type'], config['task']['index'], workers)
  _let_keras_fit_under_multi_worker()
  return tf.distribute.MultiWorkerMirroredStrategy()


def _check_tf_config():
  """Raises ValueError, naming TF_CONFIG, if it is set but does not name a cluster and
  this process's task in it (TensorFlow's own errors do not say where the JSON was)."""
  text = os.environ.get('TF_CONFIG')
  if not text:  # legitimate (all local GPUs, one process), but rarely what is meant
    logging.warning('--strategy=multi_worker_mirrored without TF_CONFIG: this process '
                    'trains alone, as the chief. To train on several machines, set TF_CONFIG '
                    'on each (see README, "Many GPUs and many machines").')
    return
  try:
    config = json.loads(text)
  except ValueError as e:
    raise ValueError(f'The TF_CONFIG environment variable is not valid JSON ({e}): '
                     f'{text[:200]}') from None
  task = config.get('task') if isinstance(config, dict) else None
  cluster = config.get('cluster') if isinstance(config, dict) else None
  if (not isinstance(cluster, dict) or not isinstance(task, dict)
      or task.get('type') not in cluster or not isinstance(task.get('index'), int)):
    raise ValueError('The TF_CONFIG environment variable must name the cluster and this '
                     'process\'s task in it, e.g. {"cluster": {"worker": ["host1:12345", '
                     '"host2:12345"]}, "task": {"type": "worker", "index": 0}}; got '
                     f'{text[:200]}')
  tasks = cluster[task['type']]
  if not 0 <= task['index'] < len(tasks):
    raise ValueError(f'The TF_CONFIG environment variable names {task["type"]} '
                     f'{task["index"]}, but its cluster has {len(tasks)} {task["type"]}(s), '
                     f'numbered from 0: {text[:200]}')


def is_multi_worker(strategy):
  """Whether `strategy` spans several processes."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return False
  cluster = strategy.cluster_resolver.cluster_spec().as_dict()
  return sum(len(tasks) for tasks in cluster.values()) > 1


def is_chief(strategy):
  """Whether this process writes the run's files: always, except on a worker of a
  multi-worker `strategy` other than its chief (TF_CONFIG's 'chief' task, else worker 0)."""
  if not is_multi_worker(strategy):
    return True
  resolver = strategy.cluster_resolver
  if resolver.task_type == 'chief':
    return True
  has_chief = 'chief' in resolver.cluster_spec().as_dict()
  return resolver.task_type == 'worker' and resolver.task_id == 0 and not has_chief


@contextlib.contextmanager
def writable_folder(folder, strategy):
  """Yields where this process writes what belongs in `folder`: `folder` itself on the
  chief; on any other worker, a temporary folder, removed after. Every worker must
  still write (a save reads variables synchronized across replicas, a collective)."""
  if is_chief(strategy):
    yield folder
    return
  # Named after the worker and the folder, so that a worker killed before it removed
  # its copy removes it when started again.
  resolver = strategy.cluster_resolver
  digest = hashlib.sha256(os.path.abspath(folder).encode()).hexdigest()[:12]
  temporary = os.path.join(tempfile.gettempdir(), f'igam_tf_{resolver.task_type}_'
                           f'{resolver.task_id}_{digest}')
  shutil.rmtree(temporary, ignore_errors=True)
  os.makedirs(temporary)
  try:
    yield temporary
  finally:
    shutil.rmtree(temporary, ignore_errors=True)


def differing_on_workers(strategy, values):
  """The keys of `values` ({name: JSON-able}, the same names on every worker) whose value
  is not the same on every worker of a multi-worker `strategy`, sorted; [] in one
  process. A collective: every worker must call it."""
  if not is_multi_worker(strategy):
    return []
  names = sorted(values)
  fingerprints = [int.from_bytes(hashlib.sha256(json.dumps(
      values[name], sort_keys=True, default=str).encode()).digest()[:8], 'little', signed=True)
                  for name in names]
  every = numbers_on_every_replica(strategy, fingerprints)
  return [name for name, column in zip(names, every.T) if len(set(column)) > 1]


def numbers_on_every_replica(strategy, numbers):
  """`numbers` (integers) as each replica of `strategy` holds them: int64 [replicas,
  len(numbers)], for checks that every worker agrees. A collective under several
  workers: every worker must call it."""
  local = tf.constant([numbers], tf.int64)
  return strategy.gather(strategy.run(lambda: tf.identity(local)), axis=0).numpy()


def barrier(strategy):
  """Returns once every worker of `strategy` has called it (a one-number all-reduce):
  after the chief writes a file the others read next. Nothing to wait for in one
  process."""
  if is_multi_worker(strategy):
    one = strategy.run(lambda: tf.ones([]))
    strategy.reduce(tf.distribute.ReduceOp.SUM, one, axis=None)


def _let_keras_fit_under_multi_worker():
  """Works around Keras 3's `fit` under MultiWorkerMirroredStrategy
  (keras-team/keras#20585), in two places, each to what it does under MirroredStrategy:

  - to build the model, it averages the first batch over replicas with one
    `strategy.reduce` of the (images, labels) structure, which the multi-worker
    strategy cannot reduce: this worker's first batch builds it instead (its shape
    is all that counts; our models are built before `fit` anyway);
  - it averages each step's logs over replicas along axis 0, which scalar logs do not
    have: scalars are averaged as they are.
  """
  trainer = keras_tf_trainer.TensorFlowTrainer
  if getattr(trainer, '_igam_multi_worker', False):
    return
  build, reduce_per_replica = trainer._maybe_symbolic_build, keras_tf_trainer.reduce_per_replica  # pylint: disable=protected-access
  multi_worker = keras_tf_trainer._collective_all_reduce_multi_worker  # Keras's own test  # pylint: disable=protected-access

  def build_from_local_batch(self, iterator=None, data_batch=None):
    strategy = self.distribute_strategy
    if iterator is not None and data_batch is None and multi_worker(strategy):
      for _, _, batches in iterator:
        data_batch = tf.nest.map_structure(
            lambda value: strategy.experimental_local_results(value)[0], next(batches))
        break
      iterator = None
    return build(self, iterator=iterator, data_batch=data_batch)

  def reduce_scalars_too(values, strategy, reduction):
    if reduction in ('auto', 'mean') and multi_worker(strategy):
      return tf.nest.map_structure(
          lambda value: strategy.reduce(tf.distribute.ReduceOp.MEAN, value,
                                        axis=None if value.shape.rank == 0 else 0), values)
    return reduce_per_replica(values, strategy, reduction)

  trainer._maybe_symbolic_build = build_from_local_batch  # pylint: disable=protected-access
  keras_tf_trainer.reduce_per_replica = reduce_scalars_too
  trainer._igam_multi_worker = True  # pylint: disable=protected-access
