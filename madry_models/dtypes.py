"""The dtype of a model's logits layer."""

import keras


def logits_dtype():
  """float32 under Keras's mixed precision (softmax and losses in float32, the standard
  practice), else None: the layer follows the model's own policy (a float64 copy stays
  float64)."""
  return 'float32' if keras.config.dtype_policy().name.startswith('mixed_') else None
