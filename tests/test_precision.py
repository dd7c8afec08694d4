"""--jit_compile (XLA) and --mixed_precision on the training jobs, on CPU: XLA gives the
weights the plain step gives; bfloat16 and float16 compute in 16 bits with float32
weights and logits and train as float32 does, within 16-bit tolerance; float16 is
refused where input gradients would need a scaling of their own."""

import dataclasses
import json
import os
import shutil
import tempfile
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

from igam_tf import experiments
from igam_tf import settings

DATA = settings.DataSettings('digits', classes=(0, 1, 2), batch_size=16, validation_split='',
                             seed=1)
# SGD: each update in proportion to its gradient (Adam's first steps are about the sign of
# each gradient, which 16-bit noise flips where a gradient is near zero).
SGD = settings.OptimizerSettings('momentum', 0.05, weight_decay=1e-3)
# Smooth, so that double backpropagation has second derivatives; BN, as the paper's student.
RESNET = settings.StudentSettings('madry_resnet', filters=(4, 4, 8, 8), units_per_stage=1,
                                  activation='softplus')


def weights(model):
  return [w.numpy() for w in model.trainable_weights]


def largest_difference(first, second):
  return max(float(np.abs(a - b).max()) for a, b in zip(first, second))


class PrecisionAndXlaTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cnn = settings.StudentSettings('simple_cnn', filters=(4, 8))
    experiments.train_baseline(settings.BaselineJob(
        'standard', student=cnn, optimizer=SGD, data=DATA, run=cls.run_settings('source')))
    experiments.finetune_teacher(settings.FinetuneJob(
        f'{cls.root}/source', data=DATA, run=cls.run_settings('teacher')))

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  @classmethod
  def run_settings(cls, name, steps=4, **options):
    return settings.RunSettings(f'{cls.root}/{name}', steps, steps, verbose=0, **options)

  def igam(self, name, steps=4, **options):
    return settings.IGAMJob(
        f'{self.root}/teacher', igam=settings.IGAMSettings(
            adv_weight=1.0, diff_weight=1e3, disc_every=2, disc_blocks=2, disc_filters=4),
        student=RESNET, optimizer=SGD, data=DATA,
        run=self.run_settings(name, steps, **options))

  def test_xla_gives_the_weights_of_the_plain_step(self):
    jobs = {
        'igam': (experiments.train_igam, self.igam),
        # (Not PGD-AT: XLA's Philox draws other numbers than TensorFlow's kernel, so its
        # random starts differ, from the same distribution.)
        'grad_norm': (experiments.train_baseline, lambda name, steps=4, **options:
                      settings.BaselineJob(
                          'grad_norm', settings.BaselineSettings(penalty_weight=1e3),
                          student=RESNET, optimizer=SGD, data=DATA,
                          run=self.run_settings(name, steps, **options))),
    }
    for name, (train, job) in jobs.items():
      with self.subTest(name):
        plain = weights(train(job(f'{name}_plain')))
        with mock.patch.object(keras.Model, 'compile', autospec=True,
                               side_effect=keras.Model.compile) as compile_call:
          xla = weights(train(job(f'{name}_xla', jit_compile=True)))
        self.assertTrue(compile_call.call_args.kwargs['jit_compile'])
        self.assertLess(largest_difference(plain, xla), 1e-4)
        # Far less than a step moves them.
        fewer = weights(train(job(f'{name}_3_steps', steps=3)))
        self.assertGreater(largest_difference(plain, fewer), 1e-3)

  def test_mixed_bfloat16_trains_igam_in_bfloat16_with_float32_weights(self):
    plain = experiments.train_igam(self.igam('igam_float32'))
    mixed = experiments.train_igam(self.igam('igam_bfloat16', mixed_precision='mixed_bfloat16'))
    self.assertEqual(keras.mixed_precision.global_policy().name, 'float32')  # put back
    convolution = next(layer for layer in mixed._flatten_layers()
                       if isinstance(layer, keras.layers.Conv2D))
    self.assertEqual(convolution.compute_dtype, 'bfloat16')
    self.assertTrue(all(w.dtype == 'float32' for w in mixed.weights))
    self.assertEqual(mixed(tf.zeros((2, 28, 28, 1))).dtype, tf.float32)
    # As float32 trains, within bfloat16's 8-bit mantissa: nearer the float32 run's
    # weights than that run is to its own state a step earlier.
    fewer = experiments.train_igam(self.igam('igam_3_steps', steps=3))
    self.assertLess(largest_difference(weights(plain), weights(mixed)),
                    largest_difference(weights(plain), weights(fewer)))
    with open(f'{self.root}/igam_bfloat16/run_config.json') as f:
      self.assertEqual(json.load(f)['mixed_precision'], 'mixed_bfloat16')

  def test_mixed_float16_scales_the_loss_of_standard_training(self):
    job = settings.BaselineJob('standard', student=RESNET, optimizer=SGD, data=DATA,
                               run=self.run_settings('standard_float32'))
    plain = experiments.train_baseline(job)
    with mock.patch.object(keras.optimizers.LossScaleOptimizer, 'scale_loss', autospec=True,
                           side_effect=keras.optimizers.LossScaleOptimizer.scale_loss) as scaled:
      mixed = experiments.train_baseline(dataclasses.replace(
          job, run=self.run_settings('standard_float16', mixed_precision='mixed_float16')))
    self.assertTrue(scaled.called)
    convolution = next(layer for layer in mixed._flatten_layers()
                       if isinstance(layer, keras.layers.Conv2D))
    self.assertEqual(convolution.compute_dtype, 'float16')
    # float16's 11-bit mantissa, loss scaled: near the float32 weights (a step moves them
    # by about 0.08 here).
    self.assertLess(largest_difference(weights(plain), weights(mixed)), 1e-3)

  def test_float16_is_refused_where_input_gradients_are_taken(self):
    float16 = self.run_settings('refused', mixed_precision='mixed_float16')
    for method in ('pgd_at', 'grad_norm'):
      with self.assertRaisesRegex(ValueError, f'mixed_float16 .* --method={method} takes '
                                  'input gradients'):
        settings.BaselineJob(method, run=float16)
    with self.assertRaisesRegex(ValueError, 'IGAM takes input gradients'):
      settings.IGAMJob('teacher', run=float16)
    self.assertFalse(os.path.exists(f'{self.root}/refused'))


if __name__ == '__main__':
  tf.test.main()
