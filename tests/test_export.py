"""Tests igam_tf.serving and the igam_tf.export binary.

Exports are served the ways a user without this project serves them: by a
script that imports only TensorFlow and NumPy, and by TensorFlow's own
saved_model_cli, each in a subprocess.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import parameterized
import keras
import numpy as np
import tensorflow as tf

from igam_tf import model_io
from igam_tf import serving
import madry_models
from tests import tf1_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Serves each EXPORT_DIR INPUTS.npz OUTPUTS.npz triple on its command line.
SERVE_SCRIPT = """
import sys

import numpy as np
import tensorflow as tf

args = sys.argv[1:]
for export_dir, inputs_path, outputs_path in zip(args[0::3], args[1::3], args[2::3]):
  loaded = tf.saved_model.load(export_dir)
  serve = loaded.signatures['serving_default']
  input_gradients = loaded.signatures['input_gradients']
  inputs = np.load(inputs_path)
  images, labels = tf.constant(inputs['images']), tf.constant(inputs['labels'])
  outputs = {k: v.numpy() for k, v in serve(images=images).items()}
  outputs['gradients'] = input_gradients(images=images, labels=labels)['gradients'].numpy()
  # The first example alone, to show that the rest of the batch changes nothing.
  outputs['first_logits'] = serve(images=images[:1])['logits'].numpy()
  outputs['first_gradients'] = input_gradients(
      images=images[:1], labels=labels[:1])['gradients'].numpy()
  np.savez(outputs_path, **outputs)
project = sorted(m for m in sys.modules if m.split('.')[0] in ('igam_tf', 'madry_models'))
assert not project, f'serving imported project code: {project}'
"""


def run_python(args, cwd):
  """Runs `python ARGS` in `cwd`: the project is importable only if `cwd` is the repo."""
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def check(result):
  if result.returncode:
    raise AssertionError(f'{result.args} failed ({result.returncode}):\n{result.stderr[-3000:]}')
  return result


def serve_in_subprocess(folder, exports):
  """Serves {name: (export_dir, images, labels)} with TensorFlow alone; returns outputs."""
  script = os.path.join(folder, 'serve.py')
  with open(script, 'w') as f:
    f.write(SERVE_SCRIPT)
  args = []
  for name, (export_dir, images, labels) in exports.items():
    np.savez(os.path.join(folder, f'{name}_inputs.npz'), images=images, labels=labels)
    args += [export_dir, f'{name}_inputs.npz', f'{name}_outputs.npz']
  check(run_python([script, *args], cwd=folder))  # cwd: the repo is not importable
  return {name: dict(np.load(os.path.join(folder, f'{name}_outputs.npz'))) for name in exports}


def new_folder(test):
  """An empty folder, removed when `test` ends (checkpoints here are large)."""
  folder = tempfile.mkdtemp()
  test.addCleanup(shutil.rmtree, folder)
  return folder


def random_batch(model, rng, batch_size=3):
  images = rng.uniform(0.0, 1.0, (batch_size,) + model.input_image_shape).astype(np.float32)
  return images, rng.randint(0, model.num_classes, batch_size).astype(np.int64)


def keras_input_gradients(model, images, labels):
  images = tf.constant(images)
  with tf.GradientTape() as tape:
    tape.watch(images)
    total = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=model(images, training=False)))
  return tape.gradient(total, images).numpy()


def float64_twin(model):
  """A float64 copy of `model` with its weights, for accurate finite differences."""
  policy = keras.config.dtype_policy()
  keras.config.set_dtype_policy('float64')
  try:
    twin = type(model).from_config(model.get_config())
  finally:
    keras.config.set_dtype_policy(policy)
  twin(np.zeros((1,) + model.input_image_shape))
  twin.set_weights(model.get_weights())
  return twin


def cross_entropy(logits, label):
  logits = np.asarray(logits, np.float64)
  top = logits.max(axis=-1)
  return top + np.log(np.exp(logits - top[:, None]).sum(axis=-1)) - logits[:, label]


class ExportClassifierTest(tf.test.TestCase, parameterized.TestCase):
  """Small random models exported by serving.export_classifier."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.folder = tempfile.mkdtemp()
    rng = np.random.RandomState(0)
    resnet = madry_models.MadryResNet(madry_models.SMALL_FILTERS, units_per_stage=1)
    resnet(tf.zeros((1,) + resnet.input_image_shape))
    # Moving statistics unlike any batch's own, so that training mode would show.
    for weight in resnet.non_trainable_weights:
      if weight.path.endswith('moving_mean'):
        weight.assign(rng.normal(0.0, 0.2, weight.shape))
      elif weight.path.endswith('moving_variance'):
        weight.assign(rng.uniform(0.5, 1.5, weight.shape))
    cls.models = {'mnist': madry_models.MadryMNIST(), 'resnet': resnet}
    cls.batches = {name: random_batch(model, rng) for name, model in cls.models.items()}
    cls.export_dirs = {}
    for name, model in cls.models.items():
      cls.export_dirs[name] = os.path.join(cls.folder, name)
      serving.export_classifier(model, cls.export_dirs[name], model.input_image_shape)
    cls.served = serve_in_subprocess(cls.folder, {
        name: (cls.export_dirs[name], *cls.batches[name]) for name in cls.models})

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.folder)
    super().tearDownClass()

  @parameterized.named_parameters(('mnist', 'mnist'), ('resnet', 'resnet'))
  def test_serving_default_matches_keras_inference(self, name):
    images, _ = self.batches[name]
    logits = self.models[name](images, training=False).numpy()
    served = self.served[name]
    self.assertEqual(served['logits'].dtype, np.float32)
    self.assertEqual(served['classes'].dtype, np.int64)
    self.assertAllClose(served['logits'], logits, rtol=1e-5, atol=1e-5)
    self.assertAllClose(served['probabilities'], tf.nn.softmax(logits), rtol=1e-5, atol=1e-7)
    self.assertAllEqual(served['classes'], np.argmax(logits, axis=-1))

  @parameterized.named_parameters(('mnist', 'mnist'), ('resnet', 'resnet'))
  def test_input_gradients_match_keras(self, name):
    expected = keras_input_gradients(self.models[name], *self.batches[name])
    self.assertAllClose(self.served[name]['gradients'], expected, rtol=1e-5,
                        atol=1e-5 * np.abs(expected).max())

  @parameterized.named_parameters(('mnist', 'mnist'), ('resnet', 'resnet'))
  def test_each_example_is_served_on_its_own(self, name):
    served = self.served[name]
    self.assertAllClose(served['first_logits'], served['logits'][:1], rtol=1e-5, atol=1e-5)
    self.assertAllClose(served['first_gradients'], served['gradients'][:1], rtol=1e-5,
                        atol=1e-5 * np.abs(served['gradients'][0]).max())

  def test_input_gradients_match_finite_differences(self):
    # MNIST: every op runs in float64 in its twin (the ResNet's standardization
    # casts to float32), so a tiny step leaves no rounding noise and crosses no ReLU kink.
    model, step = self.models['mnist'], 1e-6
    twin = float64_twin(model)
    images, labels = self.batches['mnist']
    gradients = self.served['mnist']['gradients']
    rng = np.random.RandomState(1)
    for image, label, gradient in zip(images, labels, gradients):
      pixels = rng.choice(image.size, 5, replace=False)
      # Rows 2k and 2k+1 move pixel k up and down by `step`.
      probes = np.repeat(image.reshape(1, -1).astype(np.float64), 2 * len(pixels), axis=0)
      probes[np.arange(len(probes)), np.repeat(pixels, 2)] += np.tile([step, -step], len(pixels))
      losses = cross_entropy(twin(probes.reshape((-1,) + image.shape)).numpy(), label)
      finite_differences = (losses[0::2] - losses[1::2]) / (2 * step)
      self.assertAllClose(gradient.reshape(-1)[pixels], finite_differences, rtol=1e-4,
                          atol=1e-5 * np.abs(gradient).max())

  def test_bad_inputs_fail_clearly(self):
    loaded = tf.saved_model.load(self.export_dirs['mnist'])
    serve = loaded.signatures['serving_default']
    input_gradients = loaded.signatures['input_gradients']
    images, labels = (tf.constant(x) for x in self.batches['mnist'])
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                r'Shape of tensor images \[3,28,28\] is not compatible with '
                                r'expected shape \[\?,28,28,1\]'):
      serve(images=images[..., 0])
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, 'expected shape'):
      serve(images=tf.zeros((1, 32, 32, 3)))
    with self.assertRaisesRegex(TypeError, 'Can not cast TensorSpec'):
      loaded.serving_default(tf.zeros((1, 32, 32, 3)))  # the tf.function checks the spec
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, 'expected to be a float'):
      serve(images=tf.cast(images, tf.float64))
    for bad in (images * 255.0, images - 0.5, images * np.nan):
      with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                  r'images must be float32 in \[0, 1\]'):
        serve(images=bad)
    for bad in ([0, 1, 10], [-1, 0, 1]):
      with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                  r'labels must be class indices in \[0, 10\)'):
        input_gradients(images=images, labels=tf.constant(bad, tf.int64))
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, 'one entry per image'):
      input_gradients(images=images, labels=labels[:2])
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, 'expected to be a int64'):
      input_gradients(images=images, labels=tf.cast(labels, tf.int32))

  def test_an_empty_batch_gives_empty_outputs(self):
    loaded = tf.saved_model.load(self.export_dirs['resnet'])
    served = loaded.signatures['serving_default'](images=tf.zeros((0, 32, 32, 3)))
    self.assertEqual(served['logits'].shape, (0, 10))
    self.assertEqual(served['classes'].shape, (0,))
    gradients = loaded.signatures['input_gradients'](
        images=tf.zeros((0, 32, 32, 3)), labels=tf.zeros((0,), tf.int64))['gradients']
    self.assertEqual(gradients.shape, (0, 32, 32, 3))

  def test_refuses_to_overwrite_unless_asked(self):
    model = self.models['mnist']
    export_dir = os.path.join(new_folder(self), 'export')
    os.makedirs(export_dir)
    open(os.path.join(export_dir, 'keep'), 'w').close()
    with self.assertRaisesRegex(FileExistsError, 'not empty'):
      serving.export_classifier(model, export_dir, model.input_image_shape)
    serving.export_classifier(model, export_dir, model.input_image_shape, overwrite=True)
    self.assertCountEqual(os.listdir(os.path.dirname(export_dir)), ['export'])
    self.assertIn('saved_model.pb', os.listdir(export_dir))
    self.assertNotIn('keep', os.listdir(export_dir))

  def test_failed_export_leaves_nothing_behind(self):
    def write_half_and_fail(unused_module, path, **unused_kwargs):
      os.makedirs(path)
      open(os.path.join(path, 'saved_model.pb'), 'w').close()
      raise OSError('disk full')

    model = self.models['mnist']
    folder = new_folder(self)
    with mock.patch.object(tf.saved_model, 'save', write_half_and_fail):
      with self.assertRaisesRegex(OSError, 'disk full'):
        serving.export_classifier(model, os.path.join(folder, 'export'),
                                  model.input_image_shape)
    self.assertEmpty(os.listdir(folder))


class SavedModelCliTest(tf.test.TestCase):
  """TensorFlow's own serving client, saved_model_cli, reads and runs an export."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.folder = tempfile.mkdtemp()
    cls.model = madry_models.MadryMNIST()
    cls.export_dir = os.path.join(cls.folder, 'export')
    serving.export_classifier(cls.model, cls.export_dir, cls.model.input_image_shape)
    cls.images, cls.labels = random_batch(cls.model, np.random.RandomState(2))
    np.save(os.path.join(cls.folder, 'images.npy'), cls.images)
    np.save(os.path.join(cls.folder, 'labels.npy'), cls.labels)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.folder)
    super().tearDownClass()

  def saved_model_cli(self, *args):
    # The module behind the `saved_model_cli` console script, run by this Python.
    return run_python(['-m', 'tensorflow.python.tools.saved_model_cli', *args], cwd=self.folder)

  def run_signature(self, signature, inputs):
    outdir = os.path.join(self.folder, signature)
    check(self.saved_model_cli('run', '--dir', self.export_dir, '--tag_set', 'serve',
                               '--signature_def', signature, '--inputs', inputs,
                               '--outdir', outdir))
    return {f[:-len('.npy')]: np.load(os.path.join(outdir, f)) for f in os.listdir(outdir)}

  def test_show_lists_both_signatures(self):
    shown = check(self.saved_model_cli('show', '--dir', self.export_dir, '--all')).stdout
    serving_default = shown[shown.index("signature_def['serving_default']"):]
    input_gradients = shown[shown.index("signature_def['input_gradients']"):
                            shown.index("signature_def['serving_default']")]
    for key in ("inputs['images']", 'DT_FLOAT', 'shape: (-1, 28, 28, 1)', "outputs['logits']",
                'shape: (-1, 10)', "outputs['probabilities']", "outputs['classes']",
                'DT_INT64'):
      self.assertIn(key, serving_default)
    for key in ("inputs['images']", "inputs['labels']", 'DT_INT64', "outputs['gradients']"):
      self.assertIn(key, input_gradients)

  def test_run_serving_default(self):
    outputs = self.run_signature('serving_default', 'images=images.npy')
    logits = self.model(self.images, training=False).numpy()
    self.assertAllClose(outputs['logits'], logits, rtol=1e-5, atol=1e-5)
    self.assertAllClose(outputs['probabilities'], tf.nn.softmax(logits), rtol=1e-5, atol=1e-7)
    self.assertAllEqual(outputs['classes'], np.argmax(logits, axis=-1))

  def test_run_input_gradients(self):
    outputs = self.run_signature('input_gradients', 'images=images.npy;labels=labels.npy')
    expected = keras_input_gradients(self.model, self.images, self.labels)
    self.assertAllClose(outputs['gradients'], expected, rtol=1e-5,
                        atol=1e-5 * np.abs(expected).max())


class ExportBinaryTest(tf.test.TestCase):
  """python -m igam_tf.export on checkpoints laid out like MadryLab's releases."""

  def export(self, *flags):
    return run_python(['-m', 'igam_tf.export', *flags], cwd=REPO)

  def assert_export_reproduces_tf1_logits(self, model, build_checkpoint, expected_lines):
    folder = new_folder(self)
    release = os.path.join(folder, 'models', 'adv_trained')
    _, images, tf1_logits = build_checkpoint(release)
    export_dir = os.path.join(folder, 'export')
    stdout = check(self.export(f'--model={model}', f'--checkpoint={release}',
                               f'--export_dir={export_dir}')).stdout
    for line in expected_lines + [f'Wrote a SavedModel to {export_dir}', 'serving_default:',
                                  'input_gradients:', '  output gradients: float32']:
      self.assertIn(line, stdout)
    labels = np.zeros(len(images), np.int64)
    served = serve_in_subprocess(folder, {model: (export_dir, images, labels)})[model]
    self.assertLessEqual(tf1_reference.relative_error(served['logits'], tf1_logits), 1e-4)

  def test_cifar10_release_at_full_width(self):
    self.assert_export_reproduces_tf1_logits(
        'madry_cifar10',
        lambda folder: tf1_reference.build_madry_cifar_checkpoint(
            folder, filters=madry_models.WRN_32_10_FILTERS, units_per_stage=5),
        ['checkpoint-70000 (madry_cifar10, 10 classes, filters 16,160,320,640, '
         '5 units per stage)'])

  def test_mnist_release(self):
    self.assert_export_reproduces_tf1_logits(
        'madry_mnist', tf1_reference.build_madry_mnist_checkpoint,
        ['checkpoint-99900 (madry_mnist, 10 classes)'])

  def test_trained_model_folder(self):
    folder = new_folder(self)
    spec = model_io.classifier_spec('madry_resnet', 4, (12, 12, 3), activation='gelu',
                                    filters=(4, 4, 8, 8), units_per_stage=1)
    model = model_io.build_model(spec)
    model_io.save_model(os.path.join(folder, 'trained'), model, spec)
    export_dir = os.path.join(folder, 'export')
    stdout = check(self.export('--model=trained', f'--model_dir={folder}/trained',
                               f'--export_dir={export_dir}')).stdout
    self.assertIn('(madry_resnet, 4 classes)', stdout)
    images = np.random.RandomState(0).rand(3, 12, 12, 3).astype(np.float32)
    served = serve_in_subprocess(folder, {'trained': (export_dir, images, np.zeros(3, np.int64))})
    self.assertAllClose(served['trained']['logits'], model(images), rtol=1e-5, atol=1e-5)
    result = self.export('--model=trained', f'--model_dir={folder}/nothing',
                         f'--export_dir={folder}/export2')
    self.assertEqual(result.returncode, 1)
    self.assertIn('is not a trained model folder', result.stderr)

  def test_trained_model_as_a_madry_checkpoint(self):
    # What the original TF1 graph computes from the written checkpoint is the model.
    folder = new_folder(self)
    spec = model_io.classifier_spec('madry_mnist', 10, (28, 28, 1))
    model = model_io.build_model(spec)
    model_io.save_model(os.path.join(folder, 'trained'), model, spec)
    export_dir = os.path.join(folder, 'madry')
    stdout = check(self.export('--model=trained', f'--model_dir={folder}/trained',
                               '--format=madry_checkpoint', f'--export_dir={export_dir}')).stdout
    self.assertIn(f'Wrote a TF1 checkpoint in MadryLab\'s layout: {export_dir}/checkpoint-0',
                  stdout)
    images = np.random.RandomState(0).rand(3, 28, 28, 1).astype(np.float32)
    self.assertAllClose(tf1_reference.mnist_logits_of_checkpoint(
        f'{export_dir}/checkpoint-0', images), model(images), rtol=1e-5, atol=1e-5)
    # The folder moves with its index (relative paths, as in the release zips).
    os.rename(export_dir, f'{folder}/moved')
    reloaded = madry_models.load_madry_mnist(f'{folder}/moved')
    self.assertAllClose(reloaded(images), model(images), rtol=1e-6, atol=1e-6)

    # Models the TF1 code would read as another function are refused, naming why.
    other = model_io.classifier_spec('madry_resnet', 4, (12, 12, 3), activation='gelu',
                                     filters=(4, 4, 8, 8), units_per_stage=1)
    model_io.save_model(f'{folder}/gelu', model_io.build_model(other), other)
    cnn = model_io.classifier_spec('simple_cnn', 4, (12, 12, 3))
    model_io.save_model(f'{folder}/cnn', model_io.build_model(cnn), cnn)
    for flags, message in (
        (['--model=trained', f'--model_dir={folder}/gelu'], "activation='gelu' (the original: "
                                                            "'leaky_relu')"),
        (['--model=trained', f'--model_dir={folder}/cnn'], 'has no MadryLab TF1 layout'),
        (['--model=madry_mnist', f'--checkpoint={folder}/moved'], 'is one already')):
      result = self.export(*flags, '--format=madry_checkpoint', f'--export_dir={folder}/out')
      self.assertEqual(result.returncode, 1, result.stderr)
      self.assertIn(message, result.stderr)
      self.assertNotIn('Traceback', result.stderr)
      self.assertFalse(os.path.exists(f'{folder}/out'))

  def test_bad_checkpoint_fails_clearly(self):
    folder = new_folder(self)
    export_dir = os.path.join(folder, 'export')
    result = self.export('--model=madry_mnist', f'--checkpoint={folder}/missing/checkpoint-1',
                         f'--export_dir={export_dir}')
    self.assertNotEqual(result.returncode, 0)
    self.assertIn(f'ERROR: cannot load --checkpoint={folder}/missing/checkpoint-1', result.stderr)
    self.assertIn('No such checkpoint path', result.stderr)
    self.assertNotIn('Traceback', result.stderr)
    self.assertEqual(os.listdir(folder), [])


if __name__ == '__main__':
  tf.test.main()
