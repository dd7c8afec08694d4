"""Input gradients J(x): how each pixel moves the classification objective.

Gradients come from a per-example *sum* so that each example's gradient is its
own and does not depend on how the batch is split across replicas.
"""

import tensorflow as tf

GRADIENT_OF = ('xent', 'true_prob')


def classification_objective(logits, labels, gradient_of='xent'):
  """The summed objective whose input gradient is matched.

  'xent': cross-entropy, as the paper's text says. 'true_prob': the softmax
  probability of the true class, as the authors' code does (it points the other
  way and vanishes on confidently classified examples).
  """
  if gradient_of == 'xent':
    return tf.reduce_sum(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
  if gradient_of == 'true_prob':
    return tf.reduce_sum(tf.gather(tf.nn.softmax(logits), labels, batch_dims=1))
  raise ValueError(f'gradient_of must be one of {GRADIENT_OF}, got {gradient_of!r}')


def input_gradients(model_fn, images, labels, gradient_of='xent'):
  """Returns (d objective / d images, logits).

  Called inside an outer `tf.GradientTape`, the result stays differentiable
  w.r.t. the model's weights (double backpropagation).
  """
  labels = tf.cast(labels, tf.int32)
  with tf.GradientTape() as tape:
    tape.watch(images)
    logits = model_fn(images)
    objective = classification_objective(logits, labels, gradient_of)
  return tape.gradient(objective, images), logits


def normalize_per_example(gradients):
  """Mean-centres each example's gradient map and scales it to unit L2 norm, so the
  discriminator judges the pattern, not the size (as the authors' code does, with
  TF's default epsilon: a map of norm below 1e-6 is divided by 1e-6)."""
  axes = list(range(1, gradients.shape.rank))
  centred = gradients - tf.reduce_mean(gradients, axis=axes, keepdims=True)
  return tf.math.l2_normalize(centred, axis=axes, epsilon=1e-12)
