"""Classifier architectures for students and teachers, chosen by name.

Transfer across architectures is the paper's point, so a student can be any of
these whatever the teacher is. All take images in [0, 1] and return logits.
"""

import keras

from madry_models import MadryMNIST
from madry_models import MadryResNet
from madry_models import SMALL_FILTERS

ARCHITECTURES = ('madry_resnet', 'madry_mnist', 'simple_cnn')
DEFAULT_ACTIVATIONS = {'madry_resnet': 'leaky_relu', 'madry_mnist': 'relu', 'simple_cnn': 'relu'}


def simple_cnn(num_classes, filters=(32, 64, 128), activation='relu', name='simple_cnn'):
  """A plain all-convolutional net (a different family from both Madry models):
  3x3 convs, the later ones with stride 2, then global average pooling."""
  layers = []
  for i, width in enumerate(filters):
    layers += [keras.layers.Conv2D(width, 3, strides=1 if i == 0 else 2, padding='same',
                                   name=f'conv_{i}'),
               keras.layers.Activation(activation)]
  layers += [keras.layers.GlobalAveragePooling2D(),
             keras.layers.Dense(num_classes, name='logits')]
  return keras.Sequential(layers, name=name)


def build_classifier(architecture, num_classes, image_shape, activation=None, filters=None,
                     units_per_stage=5):
  """Builds (and runs once, so its weights exist) a classifier by name.

  `activation=None` keeps the architecture's own; `filters` sets madry_resnet's
  four widths or simple_cnn's layer widths.
  """
  activation = activation or DEFAULT_ACTIVATIONS.get(architecture)
  if architecture == 'madry_resnet':
    model = MadryResNet(filters=filters or SMALL_FILTERS, units_per_stage=units_per_stage,
                        num_classes=num_classes, activation=activation)
  elif architecture == 'madry_mnist':
    if filters:
      raise ValueError('madry_mnist has fixed widths: leave --filters unset')
    model = MadryMNIST(num_classes=num_classes, activation=activation)
  elif architecture == 'simple_cnn':
    model = simple_cnn(num_classes, filters=filters or (32, 64, 128), activation=activation)
  else:
    raise ValueError(f'Unknown architecture {architecture!r}; known: {", ".join(ARCHITECTURES)}')
  model(keras.ops.zeros((1,) + tuple(image_shape)))
  return model
