"""Small models and images that the attack tests share."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import keras
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The start of a script run with (repository, tiny_cnn weights): two logical CPUs, a
# MirroredStrategy over them, the weights loaded into a tiny_cnn built in its scope, and
# the digits test split (`strategy`, `model`, `test`; `attacks`, `np`, `json` imported).
TWO_CPU_PRELUDE = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    from igam_tf import attacks
    from igam_tf.data import load_dataset
    from tests.attack_fixtures import tiny_cnn

    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    with strategy.scope():
      model = tiny_cnn()
    model.load_weights(sys.argv[2])
    test = load_dataset('digits', 'test')
''')


def run_on_two_cpus(model, script):
  """Runs `script` (starting with TWO_CPU_PRELUDE) on `model`'s weights in a fresh process,
  so that it can split one CPU into two devices; returns the JSON its last line prints."""
  with tempfile.TemporaryDirectory() as folder:
    weights = os.path.join(folder, 'tiny.weights.h5')
    model.save_weights(weights)
    completed = subprocess.run([sys.executable, '-c', script, REPO, weights],
                               capture_output=True, text=True, timeout=300, check=False)
  if completed.returncode:
    raise AssertionError(f'the two-CPU script failed:\n{completed.stderr[-3000:]}')
  return json.loads(completed.stdout.strip().splitlines()[-1])


def tiny_cnn(image_shape=(28, 28, 1), num_classes=10, dropout=0.0):
  """Small and quick to train: a strided conv net that reaches ~95% on digits in 3 epochs
  (simple_cnn's global average pooling learns digits slowly)."""
  layers = [keras.Input(image_shape),
            keras.layers.Conv2D(8, 3, strides=2, activation='relu'),
            keras.layers.Conv2D(16, 3, strides=2, activation='relu'),
            keras.layers.Flatten()]
  if dropout:
    layers.append(keras.layers.Dropout(dropout))
  return keras.Sequential(layers + [keras.layers.Dense(num_classes)])


def edge_images(num, shape, seed=0):
  """Images crowded at the box's edges: 0, 1, within 1e-3 of them, and uniform."""
  rng = np.random.RandomState(seed)
  pools = [np.zeros(shape), np.ones(shape), rng.uniform(0, 1e-3, shape),
           rng.uniform(1 - 1e-3, 1, shape), rng.uniform(0, 1, shape)]
  choice = rng.randint(0, len(pools), (num,) + tuple(shape))
  images = np.choose(choice, [np.broadcast_to(p, (num,) + tuple(shape)) for p in pools])
  return images.astype(np.float32)


def distances(images, adversarial):
  """Per-example (L-inf, L2) distances."""
  delta = (np.asarray(adversarial, np.float64) - np.asarray(images, np.float64))
  delta = delta.reshape(len(delta), -1)
  return np.abs(delta).max(axis=1), np.sqrt(np.square(delta).sum(axis=1))


# Attacks on the same examples with the same seeds agree up to float ties: batch size and
# CPU choose oneDNN's kernels, a logit can move by one ulp, and that can flip a sign step
# or a Square acceptance, moving one pixel by a step (Square50 on AMD EPYC: 1 of 3456
# pixels); a real difference (other seeds, other examples) moves most of them. APGD on
# DLR, whose step-size schedule compares losses, forks whole trajectories at such ties
# (10% of pixels there), so its tests compare which examples it broke instead.
MAX_TIED_PIXELS = 0.005


def tied_pixel_fraction(actual, expected, atol=1e-5):
  """The fraction of pixels where two attacks' examples differ by more than `atol`."""
  return float(np.mean(~np.isclose(np.asarray(actual), np.asarray(expected), rtol=0,
                                   atol=atol)))
