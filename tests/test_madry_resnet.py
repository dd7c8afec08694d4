"""MadryResNet reproduces the original TF1 wide ResNet's inference logits."""

import os
import shutil
import tempfile

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import madry_models
from madry_models.resnet import normalize_images
from madry_models import checkpoints
from tests import tf1_reference

_TOLERANCE = 1e-4
_SMALL = (16, 16, 32, 64)


def _relative_error(model_logits, expected):
  return tf1_reference.relative_error(model_logits, expected)


class MadryResNetCheckpointTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ('one_unit', dict(filters=_SMALL, units_per_stage=1)),
      ('two_units_100_classes', dict(filters=_SMALL, units_per_stage=2, num_classes=100)),
      # Stage 1 changes channels at stride 1 and pads 8 on each side.
      ('stage_one_widens', dict(filters=(8, 24, 48, 96), units_per_stage=1)),
      ('finetuned_head', dict(filters=_SMALL, units_per_stage=1, num_classes=5,
                              head_scope='target_task_logit')),
      ('finetuned_head_beside_source_head',
       dict(filters=_SMALL, units_per_stage=1, num_classes=7,
            head_scope='target_task_logit', keep_source_head=True)),
  )
  def test_same_logits_as_tf1_graph(self, config):
    folder = os.path.join(self.get_temp_dir(), self._testMethodName)
    prefix, images, logits = tf1_reference.build_madry_cifar_checkpoint(folder, **config)
    num_classes = config.get('num_classes', 10)
    self.assertEqual(logits.shape, (4, num_classes))

    inferred = madry_models.load_madry_resnet(folder)
    self.assertEqual(inferred.filters, config['filters'])
    self.assertEqual(inferred.units_per_stage, config['units_per_stage'])
    self.assertEqual(inferred.num_classes, num_classes)
    self.assertLessEqual(_relative_error(inferred(images), logits), _TOLERANCE)

    explicit = madry_models.MadryResNet(config['filters'], config['units_per_stage'],
                                        num_classes)
    explicit(tf.zeros((1, 32, 32, 3)))
    self.assertEqual(madry_models.load_tf1_checkpoint(explicit, prefix), prefix)
    self.assertLessEqual(_relative_error(explicit(images), logits), _TOLERANCE)
    self.assertLessEqual(_relative_error(tf.function(explicit)(images), logits), _TOLERANCE)

  def test_full_width_released_layout(self):
    folder = os.path.join(self.get_temp_dir(), 'models', 'adv_trained')
    prefix, images, logits = tf1_reference.build_madry_cifar_checkpoint(
        folder, filters=madry_models.WRN_32_10_FILTERS, units_per_stage=5, batch_size=2)
    self.assertEqual(prefix, os.path.join(folder, 'checkpoint-70000'))
    with open(os.path.join(folder, 'checkpoint')) as f:
      self.assertIn('model_checkpoint_path: "checkpoint-70000"', f.read())

    model = madry_models.load_madry_resnet(folder)
    self.assertEqual(model.filters, (16, 160, 320, 640))
    self.assertEqual(model.units_per_stage, 5)
    self.assertEqual(model.num_classes, 10)
    self.assertLessEqual(_relative_error(model(images), logits), _TOLERANCE)
    # Every model variable in the checkpoint (slots aside) has its Keras weight.
    _, shapes = checkpoints.read_variables(prefix)
    self.assertEqual(set(model.tf1_variables()), set(shapes))


class MadryResNetInferenceTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    folder = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, folder)
    _, cls.images, cls.logits = tf1_reference.build_madry_cifar_checkpoint(folder, seed=1)
    cls.model = madry_models.load_madry_resnet(folder)

  def test_single_image_gives_its_logits_from_the_batch(self):
    for i in range(len(self.images)):
      self.assertLessEqual(
          _relative_error(self.model(self.images[i:i + 1]), self.logits[i:i + 1]), _TOLERANCE)

  def test_inference_ignores_the_rest_of_the_batch(self):
    first = self.images[:1]
    alone = self.model(first).numpy()
    others = np.random.RandomState(2).uniform(0, 1, (5, 32, 32, 3)).astype(np.float32)
    in_other_batch = self.model(np.concatenate([others[:2], first, others[2:]]))[2:3]
    self.assertLessEqual(_relative_error(in_other_batch, alone), 1e-5)
    self.assertAllClose(self.model(self.images[:2])[:1], alone, rtol=1e-5, atol=1e-5)

  def test_training_mode_uses_batch_statistics(self):
    model = madry_models.MadryResNet(_SMALL, 2)
    model(self.images[:1])
    model.set_weights(self.model.get_weights())  # leaves the shared model's BN untouched
    training = model(self.images, training=True)
    # The checkpoint's moving statistics differ from the batch's, so the modes differ.
    self.assertGreater(_relative_error(training, self.logits), 1e-2)

  def test_batch_statistics_normalize_like_training_and_change_no_variable(self):
    model = madry_models.MadryResNet(_SMALL, 2)
    model(self.images[:1])
    model.set_weights(self.model.get_weights())
    before = [v.numpy().copy() for v in model.variables]
    with_batch_statistics = model(self.images, batch_statistics=True)
    for b, a in zip(before, model.variables):
      self.assertAllEqual(b, a.numpy())  # moving averages untouched
    self.assertAllClose(with_batch_statistics, model(self.images, training=True),
                        rtol=1e-4, atol=1e-4)
    # training=True did move them.
    self.assertNotAllClose(before, [v.numpy() for v in model.variables])


class InputNormalizationTest(tf.test.TestCase):

  def test_authors_normalization_is_standardization_scaled_down(self):
    images = tf.random.stateless_uniform((3, 8, 8, 3), seed=(1, 2))
    mean_l2 = normalize_images(images, 'mean_l2')
    self.assertAllClose(tf.reduce_mean(mean_l2, axis=[1, 2, 3]), tf.zeros(3), atol=1e-6)
    self.assertAllClose(tf.norm(tf.reshape(mean_l2, (3, -1)), axis=1), tf.ones(3))
    self.assertAllClose(mean_l2, normalize_images(images, 'standardize') / np.sqrt(8 * 8 * 3),
                        atol=1e-6)

  def test_models_differ_only_by_their_input_normalization(self):
    images = tf.random.stateless_uniform((2, 8, 8, 3), seed=(3, 4))
    standard = madry_models.MadryResNet(_SMALL, units_per_stage=1, num_classes=2)
    authors = madry_models.MadryResNet(_SMALL, units_per_stage=1, num_classes=2,
                                       input_normalization='mean_l2')
    standard(images), authors(images)
    authors.set_weights(standard.get_weights())
    self.assertNotAllClose(standard(images), authors(images))
    self.assertEqual(authors.get_config()['input_normalization'], 'mean_l2')
    with self.assertRaisesRegex(ValueError, 'input_normalization must be one of'):
      madry_models.MadryResNet(_SMALL, 2, input_normalization='l2')


if __name__ == '__main__':
  tf.test.main()
