"""Input transforms of the paper's Section 4.3: fit student-task images to the teacher.

The teacher sees `transform(x)`; its input gradient is taken w.r.t. the student's
input `x` through the transform, so every transform here is differentiable (for
an affine transform x -> A x + b, the gradient is A^T applied to the teacher's
gradient). A spec string composes them left to right, e.g.
`channel_average,center_crop:28` turns a 32x32x3 CIFAR image into a 28x28x1
MNIST-sized one.
"""

import dataclasses

import keras
import tensorflow as tf


def _positive(name, value):
  if value < 1:
    raise ValueError(f'{name}:{value}: the size must be a positive integer')
  return value


class ChannelAverage(keras.layers.Layer):
  """RGB -> gray: the mean over channels (CIFAR images for an MNIST teacher)."""

  def call(self, x):
    return tf.reduce_mean(x, axis=-1, keepdims=True)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (1,)


class CenterCrop(keras.layers.Layer):

  def __init__(self, size, **kwargs):
    super().__init__(**kwargs)
    self.size = _positive('center_crop', size)

  def call(self, x):
    return tf.image.crop_to_bounding_box(x, *self.window(x.shape[1], x.shape[2])[:2],
                                         self.size, self.size)

  def window(self, height, width):
    """(top, left, size, size) of the kept region."""
    if self.size > min(height, width):
      raise ValueError(f'center_crop:{self.size} is larger than the {height}x{width} input')
    return (height - self.size) // 2, (width - self.size) // 2, self.size, self.size

  def compute_output_shape(self, input_shape):
    self.window(input_shape[1], input_shape[2])
    return (input_shape[0], self.size, self.size, input_shape[3])


class Resize(keras.layers.Layer):
  """Bilinear resize, up or down."""

  def __init__(self, size, **kwargs):
    super().__init__(**kwargs)
    self.size = _positive('resize', size)

  def call(self, x):
    return tf.image.resize(x, (self.size, self.size), method='bilinear')

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.size, self.size, input_shape[3])


class AveragePoolDownsize(keras.layers.Layer):
  """k x k average pooling: bilinear downsizing by an integer factor (2 by default)."""

  def __init__(self, factor=2, **kwargs):
    super().__init__(**kwargs)
    self.factor = _positive('avg_pool', factor)

  def call(self, x):
    return tf.nn.avg_pool2d(x, self.factor, self.factor, 'VALID')

  def compute_output_shape(self, input_shape):
    batch, height, width, channels = input_shape
    if min(height, width) < self.factor:
      raise ValueError(f'avg_pool:{self.factor} needs an input of at least {self.factor}x'
                       f'{self.factor}, got {height}x{width}')
    return (batch, height // self.factor, width // self.factor, channels)


def _padded_shape(name, size, input_shape):
  batch, height, width, channels = input_shape
  if size < max(height, width):
    raise ValueError(f'{name}:{size} is smaller than the {height}x{width} input: a pad '
                     f'must be at least as large as the image')
  return (batch, size, size, channels)


class CenterPad(keras.layers.Layer):
  """Zero padding to `size` x `size`, the image in the centre."""

  def __init__(self, size, **kwargs):
    super().__init__(**kwargs)
    self.size = _positive('center_pad', size)

  def compute_output_shape(self, input_shape):
    return _padded_shape('center_pad', self.size, input_shape)

  def call(self, x):
    top, left = (self.size - x.shape[1]) // 2, (self.size - x.shape[2]) // 2
    return tf.image.pad_to_bounding_box(x, top, left, self.size, self.size)


class RandomPad(keras.layers.Layer):
  """Zero padding to `size` x `size`: when training, each example at a place of its
  own, drawn afresh at every call; in the centre otherwise."""

  def __init__(self, size, seed=0, **kwargs):
    super().__init__(**kwargs)
    self.size, self.seed = _positive('random_pad', size), seed

  def compute_output_shape(self, input_shape):
    return _padded_shape('random_pad', self.size, input_shape)

  def build(self, input_shape):
    # Counts the training calls that drew offsets. A weight, so checkpoints keep it and
    # a resumed run draws the pads an uninterrupted one would.
    self.draws = self.add_weight(shape=(), dtype='int64', initializer='zeros',
                                 trainable=False, aggregation='only_first_replica',
                                 name='draws')

  def call(self, x, training=False):
    height, width = x.shape[1], x.shape[2]
    if not training:
      return tf.image.pad_to_bounding_box(x, (self.size - height) // 2,
                                          (self.size - width) // 2, self.size, self.size)
    seeds = tf.random.experimental.stateless_split(
        tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.draws, tf.int64)]), 2)
    self.draws.assign_add(1)
    batch = tf.shape(x)[0]
    top = tf.random.stateless_uniform([batch], seeds[0], 0, self.size - height + 1, tf.int32)
    left = tf.random.stateless_uniform([batch], seeds[1], 0, self.size - width + 1, tf.int32)
    # One-hot placement matrices: out[b, top_b + i, left_b + j] = x[b, i, j] (linear in x,
    # so the teacher's gradient flows back through it).
    rows = tf.one_hot(top[:, None] + tf.range(height)[None, :], self.size, dtype=x.dtype)
    cols = tf.one_hot(left[:, None] + tf.range(width)[None, :], self.size, dtype=x.dtype)
    return tf.einsum('bhs,bhwc,bwt->bstc', rows, x, cols)


class TransposeConv(keras.layers.Layer):
  """A trainable 3x3 stride-2 transposed convolution (doubles height and width).

  Trained with the teacher's new logit layer during finetuning, then frozen.
  """

  def __init__(self, channels=3, **kwargs):
    super().__init__(**kwargs)
    self.channels = _positive('transpose_conv', channels)
    self.deconv = keras.layers.Conv2DTranspose(channels, 3, strides=2, padding='same',
                                               name='deconv')

  def call(self, x):
    return self.deconv(x)

  def compute_output_shape(self, input_shape):
    batch, height, width, _ = input_shape
    return (batch, 2 * height, 2 * width, self.channels)


_TRANSFORMS = {
    'channel_average': (ChannelAverage, False),
    'center_crop': (CenterCrop, True),
    'resize': (Resize, True),
    'avg_pool': (AveragePoolDownsize, None),
    'center_pad': (CenterPad, True),
    'random_pad': (RandomPad, True),
    'transpose_conv': (TransposeConv, None),
}


@dataclasses.dataclass(frozen=True)
class GradientWindow:
  """The region of the student's input the teacher sees; gradients outside it are
  zero for the teacher, so both gradient maps are cropped to it before the
  discriminator and the difference loss."""
  top: int
  left: int
  height: int
  width: int

  def crop(self, gradients):
    return gradients[:, self.top:self.top + self.height, self.left:self.left + self.width, :]


class TeacherTransform(keras.layers.Layer):
  """A composition of the transforms above, built from a spec string."""

  def __init__(self, spec='', **kwargs):
    super().__init__(**kwargs)
    self.spec = spec
    self.steps = parse_spec(spec)

  def call(self, x, training=False):
    for step in self.steps:
      x = step(x, training=training) if isinstance(step, RandomPad) else step(x)
    return x

  def gradient_window(self, student_shape):
    """The GradientWindow for student images of shape (H, W, C), or None if the
    teacher sees the whole image."""
    window, spatial_change = None, False
    for step in self.steps:
      if isinstance(step, CenterCrop):
        if spatial_change or window:
          raise ValueError(f'Teacher transform {self.spec!r}: center_crop must come before '
                           f'any other resizing, padding or crop, so it crops the student '
                           f'image itself')
        window = GradientWindow(*step.window(student_shape[0], student_shape[1]))
      elif not isinstance(step, ChannelAverage):
        spatial_change = True
    return window

  def compute_output_shape(self, input_shape):
    shape = tuple(input_shape)
    for step in self.steps:
      shape = step.compute_output_shape(shape)
    return shape

  def output_image_shape(self, student_shape):
    """The teacher's image shape for student images of shape (H, W, C); a transform that
    cannot take them (a crop larger than the image, a pad smaller) raises ValueError."""
    if len(student_shape) != 3:
      raise ValueError(f'The teacher transform takes (height, width, channels) images, got '
                       f'shape {tuple(student_shape)}')
    try:
      return tuple(int(d) for d in self.compute_output_shape((1,) + tuple(student_shape))[1:])
    except ValueError as e:
      raise ValueError(f'Teacher transform {self.spec!r} on {"x".join(map(str, student_shape))}'
                       f' images: {e}') from None

  def get_config(self):
    return {**super().get_config(), 'spec': self.spec}


def parse_spec(spec):
  """'channel_average,center_crop:28' -> [ChannelAverage(), CenterCrop(28)]."""
  steps = []
  for item in filter(None, (s.strip() for s in (spec or '').split(','))):
    name, _, argument = item.partition(':')
    if name not in _TRANSFORMS:
      raise ValueError(f'Unknown teacher transform {name!r} in {spec!r}; known: '
                       f'{", ".join(sorted(_TRANSFORMS))} (e.g. "center_crop:28")')
    layer, needs_argument = _TRANSFORMS[name]
    if needs_argument and not argument:
      raise ValueError(f'Teacher transform {name!r} needs a size, e.g. "{name}:32"')
    if needs_argument is False and argument:
      raise ValueError(f'Teacher transform {name!r} takes no argument, got {item!r}')
    try:
      steps.append(layer(int(argument)) if argument else layer())
    except ValueError as e:
      raise ValueError(f'Bad argument in teacher transform {item!r}: {e}') from e
  return steps
