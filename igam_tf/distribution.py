"""tf.distribute strategies by name, for the binaries' --strategy and --cpu_replicas flags.

Every job builds its strategy here (`get_strategy`), first thing, before TensorFlow
starts its devices: a host CPU split into logical devices (`--cpu_replicas`) must be
configured before then, and MultiWorkerMirroredStrategy must connect its workers before
anything runs.

The jobs train the same under any number of replicas: losses are summed over each
replica's share and divided by the global batch (gradients are summed across
replicas), BN layers that normalize with batch statistics are synchronized across
replicas (`synchronize_batch_norm`), and per-example randomness is drawn from each
example's position in the global batch (`global_example_ids`), so N replicas with a
global batch B give the weights one device gives with batch B.

Under several workers (multi_worker_mirrored, the cluster in TF_CONFIG) every worker
runs the same job on its share of each batch (`shard_by_data`) and takes part in every
save, since reading a variable synchronized across replicas is a collective; but only
the chief writes the run's files: the others write into a temporary folder that is
removed after (`writable_folder`), and read the chief's.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile

from absl import logging
import keras
from keras.src.backend.tensorflow import trainer as keras_tf_trainer
import tensorflow as tf

STRATEGIES = ('default', 'mirrored', 'multi_worker_mirrored')

_strategies = {}


def configure_cpu_replicas(count):
  """Splits the host CPU into `count` logical devices (a no-op for 1, which asks for no
  split, or when it is already split so). TensorFlow must not have started its devices."""
  if count < 1:
    raise ValueError(f'--cpu_replicas must be at least 1, got {count}')
  cpu = tf.config.list_physical_devices('CPU')[0]
  current = tf.config.get_logical_device_configuration(cpu)
  if count == 1 or (current and len(current) == count):
    return
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
  except RuntimeError as e:
    raise ValueError(f'--cpu_replicas={count}: TensorFlow already started its devices '
                     f'({" ".join(str(e).split())}); split the CPU before anything runs '
                     f'on it') from None


def get_strategy(name='default', cpu_replicas=1, devices=None):
  """The strategy `name` names, made once per process (jobs run in sequence share it).

  'default': one device. 'mirrored': every local GPU; without GPUs, every logical CPU
  (`cpu_replicas` of them). 'multi_worker_mirrored': every worker the TF_CONFIG
  environment variable names (each with its local GPUs, or its CPU), the same program
  started on each; without TF_CONFIG, this process alone. `devices` (mirrored only)
  names the devices.
  """
  if name not in STRATEGIES:
    raise ValueError(f'--strategy must be one of {", ".join(STRATEGIES)}, got {name!r}')
  if name == 'multi_worker_mirrored' and cpu_replicas != 1:
    raise ValueError(f'--cpu_replicas={cpu_replicas} splits one machine\'s CPU for '
                     f'--strategy=mirrored; under multi_worker_mirrored each worker is one '
                     f'replica (or one per GPU): leave it at 1')
  key = (name, cpu_replicas, tuple(devices or ()))
  if key in _strategies:
    return _strategies[key]
  configure_cpu_replicas(cpu_replicas)
  if name == 'default':
    strategy = tf.distribute.get_strategy()
  elif name == 'multi_worker_mirrored':
    _check_tf_config()
    if os.environ.get('TF_CONFIG'):  # it waits for every worker to start: say so
      config = json.loads(os.environ['TF_CONFIG'])
      workers = sum(len(tasks) for tasks in config['cluster'].values())
      logging.info('%s %d of TF_CONFIG\'s %d workers: waiting for all of them to connect',
                   config['task']['type'], config['task']['index'], workers)
    _let_keras_fit_under_multi_worker()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  else:
    if devices is None and not tf.config.list_physical_devices('GPU'):
      devices = [device.name for device in tf.config.list_logical_devices('CPU')]
    strategy = tf.distribute.MirroredStrategy(devices)
  _strategies[key] = strategy
  return strategy


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


def shard_by_data(dataset):
  """`dataset`, set to be split over workers by its batches' examples (each worker keeps
  its share of every global batch), whatever its source: in-memory arrays, as here,
  have no files for TF's default policy to split by."""
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return dataset.with_options(options)


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


def synchronize_batch_norm(model, strategy=None):
  """Under several replicas, makes every BatchNormalization layer inside `model`
  normalize by the global batch's statistics (all-reduced), as one device does; with
  one replica nothing changes. Returns how many layers it synchronized."""
  strategy = strategy or tf.distribute.get_strategy()
  if strategy.num_replicas_in_sync == 1:
    return 0
  count = 0
  for layer in _batch_norm_layers(model):
    if not layer.synchronized:
      layer.synchronized = True
      count += 1
  return count


@contextlib.contextmanager
def local_batch_statistics(model):
  """While traced inside, `model`'s BN layers use each replica's own batch statistics:
  for a computation inside a loop (an attack's steps), where no synchronization of the
  replicas may sit."""
  synchronized = [layer for layer in _batch_norm_layers(model) if layer.synchronized]
  for layer in synchronized:
    layer.synchronized = False
  try:
    yield
  finally:
    for layer in synchronized:
      layer.synchronized = True


def _batch_norm_layers(model):
  return [layer for layer in model._flatten_layers(include_self=True, recursive=True)  # pylint: disable=protected-access
          if isinstance(layer, keras.layers.BatchNormalization)]


def global_example_ids(local_batch):
  """Each of this replica's examples' positions in the global batch, int64 [local_batch]:
  replica r holds positions r * local_batch ... (the distributed dataset splits each
  global batch into consecutive shares)."""
  context = tf.distribute.get_replica_context()
  replica = 0 if context is None else context.replica_id_in_sync_group
  local_batch = tf.cast(local_batch, tf.int64)
  return tf.cast(replica, tf.int64) * local_batch + tf.range(local_batch, dtype=tf.int64)
