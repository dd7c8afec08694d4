"""MadryLab's CIFAR-10 challenge wide ResNet (github.com/MadryLab/cifar10_challenge).

Keras layers carry the original's variable scopes in their names so that
`tf1_variables()` can map every checkpoint variable to a Keras weight.
"""

import keras
import tensorflow as tf

from madry_models.dtypes import logits_dtype

WRN_32_10_FILTERS = (16, 160, 320, 640)  # the paper's "WRN 32-10"
SMALL_FILTERS = (16, 16, 32, 64)  # quick CPU runs
LEAKINESS = 0.1
STAGE_STRIDES = (1, 2, 2)


INPUT_NORMALIZATIONS = ('standardize', 'mean_l2')


class BatchNorm(keras.layers.BatchNormalization):
  """tf.contrib.layers.batch_norm(decay=0.9, epsilon=0.001, center, scale).

  `batch_statistics=True` normalizes with the batch's own statistics without
  updating the moving averages: a frozen model run as the IGAM authors run their
  teacher (BN in training mode) or as Madry's code crafts its training attacks.

  With `synchronized` (set under several replicas), batch statistics (training=True
  or batch_statistics) are the global batch's, computed as `synchronized_moments`:
  the values and the first and second derivatives (double backpropagation) that
  tf.nn.moments gives on one device.
  """

  def __init__(self, name=None, **kwargs):
    kwargs.setdefault('momentum', 0.9)
    kwargs.setdefault('epsilon', 0.001)
    super().__init__(name=name, **kwargs)

  def call(self, inputs, training=None, batch_statistics=False):
    if not batch_statistics:
      return super().call(inputs, training=training)
    mean, variance = self._moments(inputs, None)
    return tf.nn.batch_normalization(inputs, mean, variance, self.beta, self.gamma,
                                     self.epsilon)

  def _moments(self, inputs, mask):
    if mask is not None:
      return super()._moments(inputs, mask)
    if self.synchronized:
      return synchronized_moments(inputs, [0, 1, 2])
    return tf.nn.moments(inputs, axes=[0, 1, 2])


def synchronized_moments(x, axes):
  """tf.nn.moments of the replicas' global batch (all-reduced; on one replica, of `x`).

  Two passes, as tf.nn.moments: the mean, then the mean squared difference from it with
  the gradient stopped through the mean. So the first derivatives are the exact ones
  and the second derivatives those of tf.nn.moments on one device (Keras's synchronized
  moments, E[x^2] - E[x]^2, have other second derivatives, and round worse).
  """
  context = tf.distribute.get_replica_context()
  if context is None:
    return tf.nn.moments(x, axes)
  count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype)
  count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
  mean = context.all_reduce(tf.distribute.ReduceOp.SUM,
                            tf.reduce_sum(x, axes, keepdims=True)) / count
  squared = tf.math.squared_difference(x, tf.stop_gradient(mean))
  variance = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                tf.reduce_sum(squared, axes, keepdims=True)) / count
  return tf.squeeze(mean, axes), tf.squeeze(variance, axes)


def normalize_images(images, input_normalization='standardize'):
  """Images in [0, 1] -> the network's input, on the original 0..255 scale.

  'standardize': Madry's `per_image_standardization`. 'mean_l2': the IGAM authors'
  student, which subtracts each image's mean and scales it to unit L2 norm (the same
  direction, smaller by sqrt(H*W*C), which changes the first conv's effective
  learning rate and weight decay).
  """
  x = images * 255.0
  if input_normalization == 'standardize':
    return tf.image.per_image_standardization(x)
  if input_normalization == 'mean_l2':
    x -= tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    return tf.math.l2_normalize(x, axis=[1, 2, 3])  # TF's epsilon 1e-12, as the authors'
  raise ValueError(f'input_normalization must be one of {", ".join(INPUT_NORMALIZATIONS)}, '
                   f'got {input_normalization!r}')


def make_activation(activation):
  """'leaky_relu' is the original's (slope 0.1); any Keras activation name also works
  (a smooth one such as 'gelu', 'elu' or 'softplus' has useful second derivatives)."""
  if activation == 'leaky_relu':
    return keras.layers.LeakyReLU(negative_slope=LEAKINESS)
  return keras.layers.Activation(activation)


def _conv(filters, stride, name):
  return keras.layers.Conv2D(filters, 3, strides=stride, padding='same', use_bias=False,
                             kernel_initializer='he_normal', name=name)


class ResidualUnit(keras.layers.Layer):
  """One unit of the original `_residual`, including its shortcut quirks."""

  def __init__(self, in_filters, out_filters, stride, activate_before_residual,
               activation='leaky_relu', **kwargs):
    super().__init__(**kwargs)
    self.in_filters, self.out_filters, self.stride = in_filters, out_filters, stride
    self.activate_before_residual = activate_before_residual
    # The first unit's shortcut takes the activated input ('shared_activation');
    # every other unit's takes the raw input ('residual_only_activation').
    self.first_scope = 'shared_activation' if activate_before_residual else 'residual_only_activation'
    self.bn1 = BatchNorm('bn1')
    self.conv1 = _conv(out_filters, stride, 'conv1')
    self.bn2 = BatchNorm('bn2')
    self.conv2 = _conv(out_filters, 1, 'conv2')
    self.act = make_activation(activation)

  def call(self, x, training=False, batch_statistics=False):
    bn = dict(training=training, batch_statistics=batch_statistics)
    if self.activate_before_residual:
      x = self.act(self.bn1(x, **bn))
      shortcut = x
    else:
      shortcut = x
      x = self.act(self.bn1(x, **bn))
    x = self.conv1(x)
    x = self.conv2(self.act(self.bn2(x, **bn)))
    if self.in_filters != self.out_filters or self.stride > 1:
      # Average-pool then zero-pad the channels evenly on both sides (the original
      # does this only when channels change; it cannot run otherwise with stride 2).
      shortcut = tf.nn.avg_pool2d(shortcut, self.stride, self.stride, 'VALID')
      pad = (self.out_filters - self.in_filters) // 2
      shortcut = tf.pad(shortcut, [[0, 0], [0, 0], [0, 0], [pad, pad]])
    return x + shortcut

  def tf1_variables(self, scope):
    names = {}
    for bn, bn_scope in ((self.bn1, self.first_scope), (self.bn2, 'sub2')):
      names.update({
          f'{scope}/{bn_scope}/BatchNorm/gamma': bn.gamma,
          f'{scope}/{bn_scope}/BatchNorm/beta': bn.beta,
          f'{scope}/{bn_scope}/BatchNorm/moving_mean': bn.moving_mean,
          f'{scope}/{bn_scope}/BatchNorm/moving_variance': bn.moving_variance,
      })
    names[f'{scope}/sub1/conv1/DW'] = self.conv1.kernel
    names[f'{scope}/sub2/conv2/DW'] = self.conv2.kernel
    return names


class MadryResNet(keras.Model):
  """The Madry CIFAR-10 wide ResNet: 3 stages of residual units, leaky ReLU 0.1.

  Takes images [batch, H, W, C] in [0, 1]. Like the original it works on the
  0..255 scale and standardizes each image, so original checkpoints give the
  original logits (`input_normalization='mean_l2'` is the IGAM authors' student
  instead, see `normalize_images`). `training=False` (the default) uses BN moving
  statistics; `batch_statistics=True` the batch's, without training (see `BatchNorm`).
  `activation` replaces the leaky ReLU (see `make_activation`).
  """

  input_image_shape = (32, 32, 3)

  def __init__(self, filters=WRN_32_10_FILTERS, units_per_stage=5, num_classes=10,
               activation='leaky_relu', input_normalization='standardize',
               name='madry_resnet', **kwargs):
    super().__init__(name=name, **kwargs)
    filters = tuple(int(f) for f in filters)
    if len(filters) != 4:
      raise ValueError(f'filters must have 4 entries (init conv, 3 stages), got {filters}')
    for a, b in zip(filters[:-1], filters[1:]):
      if b < a or (b - a) % 2:
        raise ValueError(f'filters must not shrink and must grow by an even number of '
                         f'channels (the shortcut pads evenly), got {filters}')
    if input_normalization not in INPUT_NORMALIZATIONS:
      raise ValueError(f'input_normalization must be one of {", ".join(INPUT_NORMALIZATIONS)}, '
                       f'got {input_normalization!r}')
    if units_per_stage < 1:
      raise ValueError(f'units_per_stage must be at least 1, got {units_per_stage}')
    self.filters, self.units_per_stage, self.num_classes = filters, units_per_stage, num_classes
    self.activation, self.input_normalization = activation, input_normalization
    self.init_conv = _conv(filters[0], 1, 'init_conv')
    self.units = []
    for stage in range(3):
      for i in range(units_per_stage):
        first = i == 0
        self.units.append(ResidualUnit(
            in_filters=filters[stage] if first else filters[stage + 1],
            out_filters=filters[stage + 1],
            stride=STAGE_STRIDES[stage] if first else 1,
            activate_before_residual=first and stage == 0,
            activation=activation, name=f'unit_{stage + 1}_{i}'))
    self.final_bn = BatchNorm('final_bn')
    self.act = make_activation(activation)
    self.logits = keras.layers.Dense(num_classes, name='logit', dtype=logits_dtype())

  def features(self, images, training=False, batch_statistics=False):
    """The globally pooled representation before the logit layer."""
    x = self.init_conv(normalize_images(images, self.input_normalization))
    for unit in self.units:
      x = unit(x, training=training, batch_statistics=batch_statistics)
    x = self.act(self.final_bn(x, training=training, batch_statistics=batch_statistics))
    return tf.reduce_mean(x, axis=[1, 2])

  def call(self, images, training=False, batch_statistics=False):
    return self.logits(self.features(images, training=training,
                                     batch_statistics=batch_statistics))

  def tf1_variables(self, head_scope='logit'):
    """Maps the original checkpoint's variable names to this model's weights.

    `head_scope='target_task_logit'` reads the IGAM authors' finetuned K-way head.
    """
    names = {'input/init_conv/DW': self.init_conv.kernel}
    for unit in self.units:
      names.update(unit.tf1_variables(unit.name))
    names.update({
        'unit_last/BatchNorm/gamma': self.final_bn.gamma,
        'unit_last/BatchNorm/beta': self.final_bn.beta,
        'unit_last/BatchNorm/moving_mean': self.final_bn.moving_mean,
        'unit_last/BatchNorm/moving_variance': self.final_bn.moving_variance,
        f'{head_scope}/DW': self.logits.kernel,
        f'{head_scope}/biases': self.logits.bias,
    })
    return names

  def get_config(self):
    return {'filters': self.filters, 'units_per_stage': self.units_per_stage,
            'num_classes': self.num_classes, 'activation': self.activation,
            'input_normalization': self.input_normalization, 'name': self.name}
