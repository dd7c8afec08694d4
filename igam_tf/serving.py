"""Exports a Keras image classifier as a SavedModel that needs no project code.

The export has two signatures, both taking float32 images [batch, H, W, C] in
[0, 1] and always running the model in inference mode:

  serving_default(images) -> logits, probabilities (softmax), classes (int64)
  input_gradients(images, labels) -> gradients: d cross-entropy / d images

The gradient is that of the per-example *sum* of cross-entropies, so each
example's gradient is its own, whatever else is in the batch (the saliency maps
of the paper's Figure 1). Serve it with `tf.saved_model.load(export_dir)`,
`saved_model_cli run` or TF Serving.
"""

import os
import uuid

import keras
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2


def _check_images(images, image_shape):
  # Signatures called by name (saved_model_cli, TF Serving, `.signatures[...]`)
  # do not enforce the declared shape; EnsureShape does, at run time.
  images = tf.ensure_shape(images, [None, *image_shape])
  # A 0..255 image fed by mistake would otherwise give a confident wrong answer.
  message = 'images must be float32 in [0, 1] (divide 0..255 pixels by 255)'
  checks = [tf.debugging.assert_greater_equal(images, 0.0, message=message),
            tf.debugging.assert_less_equal(images, 1.0, message=message)]
  with tf.control_dependencies(checks):
    return tf.identity(images)


def _check_labels(labels, images, num_classes):
  labels = tf.ensure_shape(labels, [None])
  # On a GPU an out-of-range label gives a NaN loss instead of an error.
  message = f'labels must be class indices in [0, {num_classes})'
  checks = [
      tf.debugging.assert_equal(tf.shape(labels)[0], tf.shape(images)[0],
                                message='labels must have one entry per image'),
      tf.debugging.assert_greater_equal(labels, tf.constant(0, tf.int64), message=message),
      tf.debugging.assert_less(labels, tf.constant(num_classes, tf.int64), message=message),
  ]
  with tf.control_dependencies(checks):
    return tf.identity(labels)


def _signature_functions(model, image_shape, num_classes):
  """The Python functions behind `serving_default` and `input_gradients`."""

  def logits_of(images):
    # A mixed-precision student returns float16 logits; serve float32.
    images = _check_images(images, image_shape)
    # An empty batch gets empty logits without running the model: TF 2.21's oneDNN
    # convolution returns its input's shape for an empty batch on some CPUs (seen on an
    # Intel Xeon), and the next layer then fails.
    return tf.cond(tf.shape(images)[0] > 0,
                   lambda: tf.cast(model(images, training=False), tf.float32),
                   lambda: tf.zeros([0, num_classes]))

  def serving_default(images):
    logits = logits_of(images)
    return {
        'logits': logits,
        'probabilities': tf.nn.softmax(logits),
        'classes': tf.argmax(logits, axis=-1, output_type=tf.int64),
    }

  def input_gradients(images, labels):
    labels = _check_labels(labels, images, num_classes)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(images)
      cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=labels, logits=logits_of(images))
      total = tf.reduce_sum(cross_entropy)  # a sum keeps each example's gradient its own
    return {'gradients': tape.gradient(total, images)}

  return serving_default, input_gradients


def export_classifier(model, export_dir, image_shape, overwrite=False):
  """Writes `model` (images in [0, 1] -> logits) as a SavedModel at `export_dir`.

  Args:
    model: a Keras classifier taking float32 images [batch, *image_shape] in
      [0, 1] and returning logits [batch, num_classes].
    export_dir: where to write; must not be a non-empty folder unless
      `overwrite`.
    image_shape: (H, W, C) of one image.
    overwrite: replace an existing export at `export_dir`.

  Returns:
    The number of classes the model predicts.

  The export is written beside `export_dir` and renamed into place, so a
  failure leaves no half-written export behind.
  """
  export_dir = os.fspath(export_dir).rstrip('/')
  if tf.io.gfile.exists(export_dir) and tf.io.gfile.listdir(export_dir) and not overwrite:
    raise FileExistsError(f'{export_dir} exists and is not empty; pass overwrite=True '
                          'to replace it.')
  image_shape = tuple(int(d) for d in image_shape)
  num_classes = int(model(tf.zeros((1,) + image_shape), training=False).shape[-1])
  serving_default, input_gradients = _signature_functions(model, image_shape, num_classes)
  images = tf.TensorSpec([None, *image_shape], tf.float32, name='images')
  labels = tf.TensorSpec([None], tf.int64, name='labels')
  # ExportArchive saves the tf.Variables that the functions capture, which the
  # TF1 loaders of saved_model_cli and TF Serving need (a tf.Module holding a
  # Keras 3 model loads in TF2 only). archive.track(model) would store every
  # weight a second time.
  archive = keras.export.ExportArchive()
  archive.add_endpoint('serving_default', serving_default, input_signature=[images])
  archive.add_endpoint('input_gradients', input_gradients, input_signature=[images, labels])
  partial_dir = f'{export_dir}.partial-{uuid.uuid4().hex[:8]}'
  try:
    archive.write_out(partial_dir, verbose=False)
  except BaseException:
    if tf.io.gfile.exists(partial_dir):
      tf.io.gfile.rmtree(partial_dir)
    raise
  if tf.io.gfile.exists(export_dir):
    tf.io.gfile.rmtree(export_dir)
  tf.io.gfile.rename(partial_dir, export_dir)
  return num_classes


def describe_signatures(export_dir):
  """One line per signature input and output, as written in saved_model.pb."""
  saved_model = saved_model_pb2.SavedModel()
  with tf.io.gfile.GFile(os.path.join(export_dir, 'saved_model.pb'), 'rb') as f:
    saved_model.ParseFromString(f.read())
  lines = []
  for name, signature in sorted(saved_model.meta_graphs[0].signature_def.items()):
    if name.startswith('__'):  # the loader's init op, not a serving endpoint
      continue
    lines.append(f'{name}:')
    for kind, tensors in (('input', signature.inputs), ('output', signature.outputs)):
      for key, info in sorted(tensors.items()):
        shape = tf.TensorShape(info.tensor_shape).as_list()
        lines.append(f'  {kind} {key}: {tf.as_dtype(info.dtype).name} {shape}')
  return '\n'.join(lines)
