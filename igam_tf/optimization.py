"""Optimizers and learning-rate schedules by name, for the binaries' flags."""

import keras

OPTIMIZERS = ('momentum', 'sgd', 'adam')
# The learning rate of each optimizer when none is given.
DEFAULT_LEARNING_RATES = {'momentum': 0.1, 'sgd': 0.1, 'adam': 1e-3}


def learning_rate_schedule(learning_rate, boundaries=(), values=()):
  """A constant rate, or piecewise constant: `values[i]` until step `boundaries[i]`
  (Madry's CIFAR schedule: boundaries 40000,60000 and values 0.1,0.01,0.001)."""
  if not boundaries:
    return learning_rate
  if len(values) != len(boundaries) + 1:
    raise ValueError(f'A piecewise schedule needs one more value than boundaries, got '
                     f'boundaries {list(boundaries)} and values {list(values)}')
  return keras.optimizers.schedules.PiecewiseConstantDecay(list(boundaries), list(values))


def build_optimizer(name, learning_rate, boundaries=(), values=(), momentum=0.9):
  rate = learning_rate_schedule(learning_rate, boundaries, values)
  if name == 'momentum':
    return keras.optimizers.SGD(rate, momentum=momentum)
  if name == 'sgd':
    return keras.optimizers.SGD(rate)
  if name == 'adam':
    return keras.optimizers.Adam(rate)
  raise ValueError(f'--optimizer must be one of {", ".join(OPTIMIZERS)}, got {name!r}')
