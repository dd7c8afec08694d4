"""MadryMNIST reproduces the original TF1 graph's logits from its checkpoints."""

import os

import numpy as np
import tensorflow as tf

import madry_models
from madry_models import checkpoints
from tests import tf1_reference

# The genuine release's graph and variable index (no weights; see its README.md).
_RELEASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data',
                        'madry_mnist_adv_trained')
_RELEASE_META = os.path.join(_RELEASE, 'checkpoint-99900.meta')
_RELEASE_PREFIX = os.path.join(_RELEASE, 'checkpoint-99900')
_TOLERANCE = 1e-4


class MadryMnistCheckpointTest(tf.test.TestCase):

  def _build(self, **kwargs):
    """Writes a checkpoint in the released layout; returns (folder, prefix, images, logits)."""
    folder = os.path.join(self.get_temp_dir(), self._testMethodName, 'models', 'adv_trained')
    return (folder,) + tf1_reference.build_madry_mnist_checkpoint(folder, **kwargs)

  def _assert_same_logits(self, model, images, expected):
    self.assertLessEqual(tf1_reference.relative_error(model(images), expected), _TOLERANCE)

  def test_genuine_release_graph(self):
    folder, prefix, images, logits = self._build(meta_graph=_RELEASE_META)
    self.assertEqual(prefix, os.path.join(folder, 'checkpoint-99900'))
    # The graph's own Saver wrote the Adam slots and bookkeeping beside the weights.
    saved = dict(tf.train.list_variables(prefix))
    self.assertContainsSubset(['Variable_4/Adam_1', 'beta1_power', 'global_step'], saved)
    model = madry_models.load_madry_mnist(folder)
    self.assertEqual(model.num_classes, 10)
    self._assert_same_logits(model, images, logits)

  def test_model_names_every_release_variable_with_its_shape(self):
    _, release_shapes = checkpoints.read_variables(_RELEASE_PREFIX)
    model = madry_models.MadryMNIST()
    model(tf.zeros((1, 28, 28, 1)))
    ours = {name: tuple(v.shape) for name, v in model.tf1_variables().items()}
    self.assertEqual(ours, release_shapes)

  def test_rebuilt_graph_saves_the_release_variables(self):
    _, prefix, _, _ = self._build()
    self.assertEqual(tf.train.list_variables(prefix), tf.train.list_variables(_RELEASE_PREFIX))

  def test_graph_built_from_facts(self):
    folder, prefix, images, logits = self._build(step=1234)
    self.assertEqual(tf.train.load_checkpoint(prefix).get_tensor('global_step'), 1234)
    self._assert_same_logits(madry_models.load_madry_mnist(folder), images, logits)
    # A prefix works as well as its folder.
    self._assert_same_logits(madry_models.load_madry_mnist(prefix), images, logits)

  def test_explicit_model_and_single_image(self):
    _, prefix, images, logits = self._build()
    model = madry_models.MadryMNIST()
    model(tf.zeros((1, 28, 28, 1)))
    self.assertEqual(madry_models.load_tf1_checkpoint(model, prefix), prefix)
    self._assert_same_logits(model, images, logits)
    self._assert_same_logits(model, images[1:2], logits[1:2])

  def test_finetuned_head_beside_source_head(self):
    folder, prefix, images, logits = self._build(finetuned_classes=5)
    self.assertEqual(logits.shape, (4, 5))
    self.assertIn('Variable_7', dict(tf.train.list_variables(prefix)))
    model = madry_models.load_madry_mnist(folder)
    self.assertEqual(model.num_classes, 5)
    self._assert_same_logits(model, images, logits)

    explicit = madry_models.MadryMNIST(num_classes=5)
    explicit(tf.zeros((1, 28, 28, 1)))
    madry_models.load_tf1_checkpoint(explicit, folder)
    self._assert_same_logits(explicit, images, logits)

  def test_finetuned_head_without_source_head(self):
    _, prefix, images, logits = self._build(finetuned_classes=5)
    tensors = tf1_reference.read_tf1_checkpoint(prefix)
    kept = {name: value for name, value in tensors.items()
            if not name.startswith(('Variable_6', 'Variable_7'))}
    folder = os.path.join(self.get_temp_dir(), 'finetuned_only')
    tf1_reference.write_tf1_checkpoint(folder, kept, step=4700)
    model = madry_models.load_madry_mnist(folder)
    self.assertEqual(model.num_classes, 5)
    self._assert_same_logits(model, images, logits)
    np.testing.assert_array_equal(model.logits.bias.numpy(), tensors['target_task_logit/biases'])


if __name__ == '__main__':
  tf.test.main()
