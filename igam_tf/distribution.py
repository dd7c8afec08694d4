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

Under several workers (multi_worker_mirrored) every worker runs the same job on its
share of each batch (`shard_by_data`); igam_tf/multi_worker.py makes that strategy and
says which worker writes.
"""

import contextlib

import keras
import tensorflow as tf

from igam_tf import multi_worker

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
    strategy = multi_worker.make_strategy()
  else:
    if devices is None and not tf.config.list_physical_devices('GPU'):
      devices = [device.name for device in tf.config.list_logical_devices('CPU')]
    strategy = tf.distribute.MirroredStrategy(devices)
  _strategies[key] = strategy
  return strategy


def shard_by_data(dataset):
  """`dataset`, set to be split over workers by its batches' examples (each worker keeps
  its share of every global batch), whatever its source: in-memory arrays, as here,
  have no files for TF's default policy to split by."""
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return dataset.with_options(options)


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
