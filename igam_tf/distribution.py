"""tf.distribute strategies by name, for the binaries' --strategy flag."""

import tensorflow as tf

STRATEGIES = ('default', 'mirrored', 'multi_worker_mirrored')


def get_strategy(name='default', devices=None):
  """'default': one device. 'mirrored': every local GPU (or `devices`).
  'multi_worker_mirrored': many machines, configured by the TF_CONFIG variable."""
  if name == 'default':
    return tf.distribute.get_strategy()
  if name == 'mirrored':
    return tf.distribute.MirroredStrategy(devices)
  if name == 'multi_worker_mirrored':
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f'--strategy must be one of {", ".join(STRATEGIES)}, got {name!r}')
