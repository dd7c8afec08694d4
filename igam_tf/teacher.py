"""The teacher of Section 4.1: a source model, frozen, with a new logit layer for the
target task behind an input transform (Section 4.3)."""

import keras

from igam_tf.transforms import TeacherTransform

HEAD_NAME = 'target_task_logit'  # the IGAM authors' name for the finetuned head


def source_features(source, images):
  """The source model's representation before its logit layer (inference mode)."""
  if hasattr(source, 'features'):  # the Madry models
    return source.features(images, training=False)
  if isinstance(source, keras.Sequential):  # simple_cnn, or any Sequential classifier
    x = images
    for layer in source.layers[:-1]:
      x = layer(x, training=False)
    return x
  raise ValueError(f'Cannot find the features of {type(source).__name__}: give it a '
                   f'`features(images, training)` method or make it a keras.Sequential')


class Teacher(keras.Model):
  """transform -> frozen source features -> new K-way head.

  Finetuning (`finetune_teacher`) trains only the head and, if it has weights,
  the transform (the transposed convolution); IGAM then freezes all of it.
  """

  def __init__(self, source, num_classes, transform='', name='teacher', **kwargs):
    super().__init__(name=name, **kwargs)
    self.source = source
    self.source.trainable = False  # frozen weights; BN uses its moving statistics
    self.transform = transform if isinstance(transform, TeacherTransform) \
        else TeacherTransform(transform)
    self.head = keras.layers.Dense(num_classes, name=HEAD_NAME)
    self.num_classes = num_classes

  def call(self, images, training=False):
    return self.head(source_features(self.source, self.transform(images, training=training)))
