"""MadryLab's MNIST challenge CNN (github.com/MadryLab/mnist_challenge) as a Keras model."""

import keras

from madry_models.dtypes import logits_dtype


class MadryMNIST(keras.Model):
  """conv5x5(32)-maxpool-conv5x5(64)-maxpool-dense(1024)-dense(classes), ReLU.

  Takes images of shape [batch, 28, 28, 1] in [0, 1] (the original's scale) and
  returns logits. `activation` replaces ReLU (any Keras activation name).
  """

  input_image_shape = (28, 28, 1)

  def __init__(self, num_classes=10, activation='relu', name='madry_mnist', **kwargs):
    super().__init__(name=name, **kwargs)
    self.num_classes, self.activation = num_classes, activation
    self.conv1 = keras.layers.Conv2D(32, 5, padding='same', activation=activation, name='conv1')
    self.pool1 = keras.layers.MaxPooling2D(2, padding='same', name='pool1')
    self.conv2 = keras.layers.Conv2D(64, 5, padding='same', activation=activation, name='conv2')
    self.pool2 = keras.layers.MaxPooling2D(2, padding='same', name='pool2')
    # Keras flattens NHWC in the same order as the original's tf.reshape.
    self.flatten = keras.layers.Flatten(name='flatten')
    self.fc1 = keras.layers.Dense(1024, activation=activation, name='fc1')
    self.logits = keras.layers.Dense(num_classes, name='logits', dtype=logits_dtype())

  def features(self, images, training=False, batch_statistics=False):
    """The 1024-d representation before the logit layer (no BN: `training` and
    `batch_statistics` change nothing)."""
    x = self.pool1(self.conv1(images))
    x = self.pool2(self.conv2(x))
    return self.fc1(self.flatten(x))

  def call(self, images, training=False, batch_statistics=False):
    return self.logits(self.features(images, training=training))

  def tf1_variables(self, head_scope=None):
    """Maps the original checkpoint's variable names to this model's weights.

    The original creates unnamed `tf.Variable`s, so TF1 names them by creation
    order. `head_scope='target_task_logit'` reads a finetuned K-way head saved as
    `<head_scope>/{DW,biases}` instead of `Variable_6`/`Variable_7`.
    """
    names = {
        'Variable': self.conv1.kernel, 'Variable_1': self.conv1.bias,
        'Variable_2': self.conv2.kernel, 'Variable_3': self.conv2.bias,
        'Variable_4': self.fc1.kernel, 'Variable_5': self.fc1.bias,
    }
    if head_scope:
      names[f'{head_scope}/DW'] = self.logits.kernel
      names[f'{head_scope}/biases'] = self.logits.bias
    else:
      names['Variable_6'] = self.logits.kernel
      names['Variable_7'] = self.logits.bias
    return names

  def get_config(self):
    return {'num_classes': self.num_classes, 'activation': self.activation, 'name': self.name}
