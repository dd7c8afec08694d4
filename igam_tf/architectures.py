"""Classifier architectures for students and teachers, chosen by name.

Transfer across architectures is the paper's point, so a student can be any of
these whatever the teacher is. All take images in [0, 1] and return logits.
"""

import keras

from madry_models import logits_dtype
from madry_models import MadryMNIST
from madry_models import MadryResNet
from madry_models import SMALL_FILTERS

ARCHITECTURES = ('madry_resnet', 'madry_mnist', 'simple_cnn')
DEFAULT_ACTIVATIONS = {'madry_resnet': 'leaky_relu', 'madry_mnist': 'relu', 'simple_cnn': 'relu'}
# (optimizer, learning rate) each trains with when neither is named: momentum SGD for
# the BN ResNet (Madry's CIFAR recipe); Adam for the two nets without BN, which momentum
# SGD at 0.1 does not train (the loss stays at ln K, or diverges).
DEFAULT_TRAINING = {'madry_resnet': ('momentum', 0.1), 'madry_mnist': ('adam', 1e-3),
                    'simple_cnn': ('adam', 3e-3)}


def simple_cnn(num_classes, filters=(32, 64, 128), activation='relu', name='simple_cnn'):
  """A plain all-convolutional net (a different family from both Madry models):
  3x3 convs, the later ones with stride 2, then global average pooling."""
  layers = []
  for i, width in enumerate(filters):
    layers += [keras.layers.Conv2D(width, 3, strides=1 if i == 0 else 2, padding='same',
                                   name=f'conv_{i}'),
               keras.layers.Activation(activation)]
  layers += [keras.layers.GlobalAveragePooling2D(),
             keras.layers.Dense(num_classes, name='logits', dtype=logits_dtype())]
  return keras.Sequential(layers, name=name)


def build_classifier(architecture, num_classes, image_shape, activation=None, filters=None,
                     units_per_stage=5, input_normalization=None):
  """Builds (and runs once, so its weights exist) a classifier by name.

  `activation=None` keeps the architecture's own; `filters` sets madry_resnet's
  four widths or simple_cnn's layer widths; `input_normalization` madry_resnet's
  ('standardize', Madry's, when None; or 'mean_l2', the IGAM authors' student).
  """
  activation = activation or DEFAULT_ACTIVATIONS.get(architecture)
  if input_normalization and architecture != 'madry_resnet':
    raise ValueError(f'Only madry_resnet takes an input normalization, not {architecture}: '
                     f'leave --student_input_normalization unset')
  if architecture == 'madry_resnet':
    model = MadryResNet(filters=filters or SMALL_FILTERS, units_per_stage=units_per_stage,
                        num_classes=num_classes, activation=activation,
                        input_normalization=input_normalization or 'standardize')
  elif architecture == 'madry_mnist':
    if filters:
      raise ValueError('madry_mnist has fixed widths: leave --filters unset')
    model = MadryMNIST(num_classes=num_classes, activation=activation)
  elif architecture == 'simple_cnn':
    model = simple_cnn(num_classes, filters=filters or (32, 64, 128), activation=activation)
  else:
    raise ValueError(f'Unknown architecture {architecture!r}; known: {", ".join(ARCHITECTURES)}')
  model(keras.ops.zeros((1,) + tuple(image_shape)))
  if not isinstance(model, keras.Sequential):
    # the shape it was built for, not the class's (a fully convolutional madry_resnet
    # trained on 1-channel digits takes those, not 32x32x3)
    model.input_image_shape = tuple(int(d) for d in image_shape)
  return model


def logits_with_batch_statistics(model, images):
  """`model`'s logits with its BN layers normalizing by the batch's statistics, and no
  weight or moving average changed (Madry's models; a model without BN as it is)."""
  if hasattr(model, 'features'):  # the Madry models
    return model(images, training=False, batch_statistics=True)
  if has_batch_norm(model):
    raise ValueError(f'{model.name} has BN layers but no batch-statistics mode: only the '
                     f'Madry models run BN with batch statistics without training')
  return model(images, training=False)


def has_batch_norm(layer):
  """Whether `layer` or any layer inside it is a BatchNormalization."""
  return isinstance(layer, keras.layers.BatchNormalization) or any(
      has_batch_norm(inner) for inner in getattr(layer, 'layers', ()))
