"""Input-gradient grids, as the paper's Figure 1: one row per image, the image in the
first column, then one column per model of its input gradients on that image.

The gradient is that of the cross-entropy with respect to the input pixels, in
inference mode; a model with its own `input_gradients(images, labels)` (a served
SavedModel's signature) gives its own.

Display scaling, the same for every model: each map is scaled symmetrically by the
largest |gradient| in that model's map of that image (`training.gradients_for_display`),
so mid-gray is zero and black and white are -max and +max. Maps then compare in
pattern, not size: gradient sizes differ by orders of magnitude between robust and
standard models, and a shared scale would show the smaller as flat gray.

Grid geometry, in pixels: cells of the image size times `zoom`, PADDING around and
between them, under a header of the column names in a built-in 5x7 pixel font (each
name upper-cased and wrapped to the cell width, LINE_HEIGHT per line):
  width  = columns * cell_width + (columns + 1) * PADDING
  height = header + rows * cell_height + (rows + 1) * PADDING
  header = lines * LINE_HEIGHT + PADDING (0 without a header)
"""

import math

import numpy as np
import tensorflow as tf

from igam_tf import attacks
from igam_tf import input_gradients
from igam_tf.training import gradients_for_display

PADDING = 2
GLYPH_WIDTH, GLYPH_HEIGHT = 6, 7  # 5 columns of ink and a space; 7 rows
LINE_HEIGHT = GLYPH_HEIGHT + 2
MIN_CELL_SIZE = 64  # the default zoom makes cells at least this large
IMAGE_COLUMN = 'image'

# A classic 5x7 font: five columns per glyph as hex bytes, bit 0 the top row.
_FONT = {
    ' ': '0000000000', '0': '3E5149453E', '1': '00427F4000', '2': '4261514946',
    '3': '2141454B31', '4': '1814127F10', '5': '2745454539', '6': '3C4A494930',
    '7': '0171090503', '8': '3649494936', '9': '064949291E', 'A': '7E1111117E',
    'B': '7F49494936', 'C': '3E41414122', 'D': '7F4141221C', 'E': '7F49494941',
    'F': '7F09090901', 'G': '3E4149497A', 'H': '7F0808087F', 'I': '00417F4100',
    'J': '2040413F01', 'K': '7F08142241', 'L': '7F40404040', 'M': '7F020C027F',
    'N': '7F0408107F', 'O': '3E4141413E', 'P': '7F09090906', 'Q': '3E4151215E',
    'R': '7F09192946', 'S': '4649494931', 'T': '01017F0101', 'U': '3F4040403F',
    'V': '1F2040201F', 'W': '3F4038403F', 'X': '6314081463', 'Y': '0708700807',
    'Z': '6151494543', '-': '0808080808', '_': '4040404040', '.': '0060600000',
    ':': '0036360000', '/': '2010080402', '=': '1414141414', '+': '08083E0808',
    '(': '001C224100', ')': '0041221C00', '?': '0201510906',
}


def _glyph(char):
  """A [GLYPH_HEIGHT, 5] bool array; unknown characters draw as '?'."""
  columns = bytes.fromhex(_FONT.get(char, _FONT['?']))
  return np.array([[(column >> row) & 1 for column in columns]
                   for row in range(GLYPH_HEIGHT)], bool)


def wrap(name, width):
  """`name` upper-cased and cut into lines that fit `width` pixels."""
  per_line = max(1, (width + 1) // GLYPH_WIDTH)
  name = name.upper() or ' '
  return [name[i:i + per_line] for i in range(0, len(name), per_line)]


def _draw_text(canvas, lines, top, left):
  for i, line in enumerate(lines):
    for j, char in enumerate(line):
      y, x = top + i * LINE_HEIGHT, left + j * GLYPH_WIDTH
      canvas[y:y + GLYPH_HEIGHT, x:x + GLYPH_WIDTH - 1][_glyph(char)] = 0


def model_input_gradients(model, images, labels):
  """d (summed cross-entropy) / d images in inference mode: a Keras classifier or a
  callable images -> logits, or a model's own `input_gradients(images, labels)`."""
  images = tf.convert_to_tensor(images, tf.float32)
  labels = tf.convert_to_tensor(labels, tf.int64)
  if hasattr(model, 'input_gradients'):
    return model.input_gradients(images, labels)
  gradients, _ = input_gradients.input_gradients(
      lambda x: attacks.logits_of(model, x), images, labels)
  return gradients


def default_zoom(image_shape):
  return max(1, math.ceil(MIN_CELL_SIZE / max(image_shape[:2])))


def _to_rgb(images):
  """float [N, H, W, C] in [0, 1] -> uint8 [N, H, W, 3]."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  elif images.shape[-1] != 3:
    raise ValueError(f'Images need 1 or 3 channels, got {images.shape[-1]}')
  return np.round(images * 255).astype(np.uint8)


def gradient_grid(models, images, labels, zoom=None, header=True):
  """The grid (see the module docstring) as a uint8 RGB array [height, width, 3].

  Args:
    models: {name: model} in column order; each a Keras classifier, a callable
      images -> logits, or a model with `input_gradients(images, labels)`.
    images: float [N, H, W, C] in [0, 1], C 1 or 3.
    labels: int [N], the classes whose cross-entropy is differentiated.
    zoom: integer upscaling of each cell (None: cells of at least MIN_CELL_SIZE pixels).
    header: draw the column names above the columns.
  """
  images = np.asarray(images, np.float32)
  zoom = zoom or default_zoom(images.shape[1:])
  columns = [_to_rgb(images)]
  for model in models.values():
    gradients = model_input_gradients(model, images, labels)
    columns.append(_to_rgb(gradients_for_display(tf.cast(gradients, tf.float32)).numpy()))
  rows, height, width = images.shape[:3]
  cell_height, cell_width = height * zoom, width * zoom
  names = [IMAGE_COLUMN] + list(models)
  wrapped = [wrap(name, cell_width) for name in names]
  header_height = (max(map(len, wrapped)) * LINE_HEIGHT + PADDING) if header else 0
  canvas = np.full((header_height + rows * cell_height + (rows + 1) * PADDING,
                    len(columns) * cell_width + (len(columns) + 1) * PADDING, 3), 255, np.uint8)
  for j, column in enumerate(columns):
    left = PADDING + j * (cell_width + PADDING)
    if header:
      _draw_text(canvas, wrapped[j], PADDING, left)
    for i, cell in enumerate(column):
      top = header_height + PADDING + i * (cell_height + PADDING)
      canvas[top:top + cell_height, left:left + cell_width] = np.kron(
          cell, np.ones((zoom, zoom, 1), np.uint8))
  return canvas


def write_png(path, grid):
  tf.io.write_file(path, tf.io.encode_png(grid))
