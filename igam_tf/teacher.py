"""The teacher of Section 4.1: a source model, frozen, with a new logit layer for the
target task behind an input transform (Section 4.3)."""

import keras

from madry_models import logits_dtype

from igam_tf.architectures import has_batch_norm
from igam_tf.transforms import TeacherTransform

HEAD_NAME = 'target_task_logit'  # the IGAM authors' name for the finetuned head
TEACHER_BN = ('moving', 'batch')


def source_features(source, images, batch_statistics=False):
  """The source model's representation before its logit layer, its weights and BN
  statistics untouched: BN normalizes with the moving averages, or with the batch's
  statistics when `batch_statistics` (the IGAM authors' teacher)."""
  if hasattr(source, 'features'):  # the Madry models
    return source.features(images, training=False, batch_statistics=batch_statistics)
  if isinstance(source, keras.Sequential):  # simple_cnn, or any Sequential classifier
    if batch_statistics and has_batch_norm(source):
      raise ValueError(f'--teacher_bn=batch needs a Madry source model: {source.name} has '
                       f'BN layers and no batch-statistics mode')
    x = images
    for layer in source.layers[:-1]:
      x = layer(x, training=False)
    return x
  raise ValueError(f'Cannot find the features of {type(source).__name__}: give it a '
                   f'`features(images, training, batch_statistics)` method or make it a '
                   f'keras.Sequential')


def _dims(shape):
  return 'x'.join('?' if d is None else str(d) for d in shape)


class Teacher(keras.Model):
  """transform -> frozen source features -> new K-way head.

  Finetuning (`finetune_teacher`) trains only the head and, if it has weights,
  the transform (the transposed convolution); IGAM then freezes all of it.
  `training=True` makes a random transform random (random_pad), never the source's
  BN: that is `batch_norm`, 'moving' (inference mode, our default) or 'batch' (the
  IGAM authors', who run their frozen teacher's BN in training mode).
  """

  def __init__(self, source, num_classes, transform='', batch_norm='moving', name='teacher',
               **kwargs):
    super().__init__(name=name, **kwargs)
    if batch_norm not in TEACHER_BN:
      raise ValueError(f'--teacher_bn must be one of {", ".join(TEACHER_BN)}, got {batch_norm!r}')
    self.source = source
    self.source.trainable = False  # frozen weights
    self.transform = transform if isinstance(transform, TeacherTransform) \
        else TeacherTransform(transform)
    self.head = keras.layers.Dense(num_classes, name=HEAD_NAME, dtype=logits_dtype())
    self.num_classes, self.batch_norm = num_classes, batch_norm

  def build(self, input_shape):
    """Refuses student images the transform or the source cannot take, in one line
    (before Keras would fail deep inside a layer)."""
    shape = self.transform.output_image_shape(tuple(input_shape)[1:])
    expected = getattr(self.source, 'input_image_shape', None)
    if isinstance(self.source, keras.Sequential) and self.source.inputs:
      expected = tuple(self.source.inputs[0].shape[1:])
    try:
      # TF would run a 3-channel image through a 1-channel conv as a grouped conv,
      # silently, so channels are compared; the rest by a forward pass of one image.
      fits = not expected or expected[-1] == shape[-1]
      fits = fits and self.source(keras.ops.zeros((1,) + shape)) is not None
    except Exception:  # pylint: disable=broad-except  # any layer's shape error
      fits = False
    if not fits:
      takes = f'takes {_dims(expected)} images' if expected else 'cannot take them'
      made = (f'the transform {self.transform.spec!r} makes them {_dims(shape)}'
              if self.transform.spec else 'there is no transform')
      raise ValueError(f'The teacher\'s source model {takes}: the task\'s images are '
                       f'{_dims(tuple(input_shape)[1:])} and {made} (see --transform, e.g. '
                       f'channel_average, resize:N or center_crop:N)')

  def call(self, images, training=False):
    features = source_features(self.source, self.transform(images, training=training),
                               batch_statistics=training and self.batch_norm == 'batch')
    return self.head(features)
