"""The discriminator f_disc that tells a teacher's input gradients from a student's."""

import keras

from madry_models import logits_dtype


def build_discriminator(num_blocks=4, base_filters=8, name='discriminator'):
  """`num_blocks` x (conv 4x4 stride 2 + BN + leaky ReLU 0.1), then 2 logits.

  Logit 1 means "teacher", logit 0 "student", as in the authors' code
  (CIFAR-10 -> CIFAR-100: 5 blocks of 16 * 2^i filters; Tiny-ImageNet ->
  CIFAR-10: 4 blocks of 8 * 2^i).
  """
  layers = []
  for i in range(num_blocks):
    layers += [
        keras.layers.Conv2D(base_filters * 2**i, 4, strides=2, padding='same',
                            name=f'conv_{i}'),
        # Synchronized: under MirroredStrategy its statistics cover the global batch.
        keras.layers.BatchNormalization(momentum=0.9, epsilon=0.001, synchronized=True,
                                        name=f'bn_{i}'),
        keras.layers.LeakyReLU(negative_slope=0.1),
    ]
  layers += [keras.layers.Flatten(), keras.layers.Dense(2, name='logits', dtype=logits_dtype())]
  return keras.Sequential(layers, name=name)
