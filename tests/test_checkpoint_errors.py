"""Checkpoint loading fails with a clear CheckpointError and leaves the model as it was."""

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

import madry_models
from madry_models import CheckpointError
from tests import tf1_reference

_SMALL = (16, 16, 32, 64)
_OTHER_MACHINE = '/home/madry/cifar10_challenge/models/adv_trained/checkpoint-70000'


def _resnet(filters=_SMALL, units_per_stage=1, num_classes=10):
  model = madry_models.MadryResNet(filters, units_per_stage, num_classes)
  model(tf.zeros((1, 32, 32, 3)))
  return model


def _mnist(num_classes=10):
  model = madry_models.MadryMNIST(num_classes)
  model(tf.zeros((1, 28, 28, 1)))
  return model


class CheckpointErrorTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, root)
    cls.cifar_folder = os.path.join(root, 'cifar', 'models', 'adv_trained')
    cls.cifar_prefix, cls.cifar_images, cls.cifar_logits = (
        tf1_reference.build_madry_cifar_checkpoint(cls.cifar_folder, units_per_stage=1,
                                                   batch_size=2))
    cls.cifar_tensors = tf1_reference.read_tf1_checkpoint(cls.cifar_prefix)
    cls.mnist_folder = os.path.join(root, 'mnist', 'models', 'adv_trained')
    cls.mnist_prefix, _, _ = tf1_reference.build_madry_mnist_checkpoint(
        cls.mnist_folder, batch_size=2)

  def _folder(self, name):
    return os.path.join(self.get_temp_dir(), self._testMethodName, name)

  def _copy_of_cifar_folder(self):
    folder = self._folder('copy')
    shutil.copytree(self.cifar_folder, folder)
    return folder

  def _assert_load_fails(self, model, path, *message_parts):
    """Loading `path` into `model` raises CheckpointError naming each part, changing nothing."""
    before = [w.numpy() for w in model.weights]
    with self.assertRaises(CheckpointError) as raised:
      madry_models.load_tf1_checkpoint(model, path)
    for part in message_parts:
      self.assertIn(part, str(raised.exception))
    for old, new in zip(before, model.weights):
      np.testing.assert_array_equal(old, new.numpy())
    return str(raised.exception)

  def _assert_cifar_logits(self, model):
    error = tf1_reference.relative_error(model(self.cifar_images), self.cifar_logits)
    self.assertLessEqual(error, 1e-4)

  # --- Finding the checkpoint ---

  def test_no_such_path(self):
    path = os.path.join(self.get_temp_dir(), 'no_such_dir', 'checkpoint-70000')
    self._assert_load_fails(_resnet(), path, path, 'does not exist')
    with self.assertRaisesRegex(CheckpointError, 'no_such_dir'):
      madry_models.load_madry_resnet(path)
    with self.assertRaisesRegex(CheckpointError, 'no_such_dir'):
      madry_models.load_madry_mnist(path)

  def test_prefix_without_index_file(self):
    path = os.path.join(self.cifar_folder, 'checkpoint-1')
    self._assert_load_fails(_resnet(), path, path, 'checkpoint-1.index')

  def test_folder_without_checkpoint(self):
    folder = self._folder('empty')
    os.makedirs(folder)
    self._assert_load_fails(_resnet(), folder, folder, 'No checkpoint')

  def test_absolute_path_from_another_machine_falls_back_to_the_file_beside_it(self):
    folder = self._copy_of_cifar_folder()
    with open(os.path.join(folder, 'checkpoint'), 'w') as f:
      f.write(f'model_checkpoint_path: "{_OTHER_MACHINE}"\n'
              f'all_model_checkpoint_paths: "{_OTHER_MACHINE}"\n')
    self.assertEqual(madry_models.resolve_checkpoint(folder),
                     os.path.join(folder, 'checkpoint-70000'))
    self._assert_cifar_logits(madry_models.load_madry_resnet(folder))

  def test_checkpoint_index_naming_a_missing_file(self):
    folder = self._copy_of_cifar_folder()
    with open(os.path.join(folder, 'checkpoint'), 'w') as f:
      f.write('model_checkpoint_path: "/elsewhere/checkpoint-123"\n')
    self._assert_load_fails(_resnet(), folder, '/elsewhere/checkpoint-123',
                            os.path.join(folder, 'checkpoint-123'))

  def test_without_index_file_takes_the_highest_step(self):
    folder = self._folder('steps')
    newest = dict(self.cifar_tensors)
    newest['logit/biases'] = newest['logit/biases'] + 1.0
    # 900 sorts after 10000 as text: the step must be compared as a number.
    tf1_reference.write_tf1_checkpoint(folder, self.cifar_tensors, step=900)
    tf1_reference.write_tf1_checkpoint(folder, newest, step=10000)
    os.remove(os.path.join(folder, 'checkpoint'))
    self.assertEqual(madry_models.resolve_checkpoint(folder),
                     os.path.join(folder, 'checkpoint-10000'))
    model = madry_models.load_madry_resnet(folder)
    np.testing.assert_array_equal(model.logits.bias.numpy(), newest['logit/biases'])

  def test_unreadable_checkpoint_index_file_is_ignored(self):
    folder = self._copy_of_cifar_folder()
    with open(os.path.join(folder, 'checkpoint'), 'w') as f:
      f.write('this is not a checkpoint state {{{\n')
    self._assert_cifar_logits(madry_models.load_madry_resnet(folder))

  def test_corrupt_index_file(self):
    folder = self._copy_of_cifar_folder()
    with open(os.path.join(folder, 'checkpoint-70000.index'), 'wb') as f:
      f.write(b'not an sstable' * 10)
    self._assert_load_fails(_resnet(), folder, 'checkpoint-70000.index')

  def test_missing_data_file(self):
    # As in a folder holding only a release's graph and index.
    folder = self._copy_of_cifar_folder()
    os.remove(os.path.join(folder, 'checkpoint-70000.data-00000-of-00001'))
    self._assert_load_fails(_resnet(), folder, 'checkpoint-70000', '.data')

  def test_truncated_data_file(self):
    # TF's reader raises IndexError ("Read less bytes than requested") for this one.
    folder = self._copy_of_cifar_folder()
    data = os.path.join(folder, 'checkpoint-70000.data-00000-of-00001')
    with open(data, 'rb') as f:
      content = f.read()
    with open(data, 'wb') as f:
      f.write(content[:len(content) // 2])
    self._assert_load_fails(_resnet(), folder, data, 'truncated')
    with self.assertRaisesRegex(CheckpointError, 'truncated'):
      madry_models.load_madry_resnet(folder)

  # --- Checkpoint and model disagree ---

  def test_missing_variables_are_listed(self):
    dropped = ('unit_2_0/sub2/BatchNorm/moving_variance', 'logit/biases')
    kept = {name: value for name, value in self.cifar_tensors.items()
            if not name.startswith(dropped)}
    folder = self._folder('incomplete')
    tf1_reference.write_tf1_checkpoint(folder, kept, step=70000)
    self._assert_load_fails(_resnet(), folder, '2 variable(s)', *dropped)
    with self.assertRaisesRegex(CheckpointError, 'moving_variance'):
      madry_models.load_madry_resnet(folder)

  def test_fewer_units_than_the_model(self):
    self._assert_load_fails(_resnet(units_per_stage=2), self.cifar_folder,
                            'unit_1_1/sub1/conv1/DW', 'unit_3_1/residual_only_activation')

  def test_class_count_mismatch(self):
    self._assert_load_fails(_resnet(num_classes=5), self.cifar_folder,
                            "'logit/DW'", 'expects [64, 5]', 'has [64, 10]')
    with self.assertRaisesRegex(CheckpointError, r'logit/DW.*\[64, 5\].*\[64, 10\]'):
      madry_models.load_madry_resnet(self.cifar_folder, num_classes=5)

  def test_filters_mismatch(self):
    message = self._assert_load_fails(_resnet(filters=(16, 32, 64, 128)), self.cifar_folder,
                                      'Shape mismatch')
    self.assertRegex(message, r"'unit_1_0/.*' .*expects \[.*32\], .* has \[.*16\]")

  def test_mnist_class_count_mismatch(self):
    self._assert_load_fails(_mnist(num_classes=5), self.mnist_folder,
                            "'Variable_6'", '[1024, 5]', '[1024, 10]')

  def test_mnist_checkpoint_into_cifar_model(self):
    self._assert_load_fails(_resnet(), self.mnist_folder, 'is a Madry MNIST CNN checkpoint',
                            'needs a Madry CIFAR-10 wide ResNet checkpoint')
    with self.assertRaisesRegex(CheckpointError, 'Madry MNIST CNN checkpoint'):
      madry_models.load_madry_resnet(self.mnist_folder)

  def test_cifar_checkpoint_into_mnist_model(self):
    self._assert_load_fails(_mnist(), self.cifar_folder,
                            'is a Madry CIFAR-10 wide ResNet checkpoint',
                            'needs a Madry MNIST CNN checkpoint')
    with self.assertRaisesRegex(CheckpointError, 'is a Madry CIFAR-10 wide ResNet checkpoint'):
      madry_models.load_madry_mnist(self.cifar_folder)

  def test_unrelated_checkpoint(self):
    folder = self._folder('unrelated')
    tf1_reference.write_tf1_checkpoint(folder, {'dense/kernel': np.ones((3, 2), np.float32)},
                                       step=1)
    self._assert_load_fails(_resnet(), folder, 'neither a Madry MNIST nor')
    self._assert_load_fails(_mnist(), folder, 'neither a Madry MNIST nor')


if __name__ == '__main__':
  tf.test.main()
