"""What a training step costs: IGAM against standard and PGD-k adversarial training.

  python benchmarks/step_cost.py --architecture=madry_resnet --filters=16,16,32,64

The paper (Section 5.2) reports an IGAM epoch at 347 s against 815 s for PGD-7
training. This prints seconds per step of each method on one student, measured in
one run, and their ratios to standard training. IGAM's teacher is Table 1's, the
Madry MNIST CNN behind channel averaging and a centre crop. `igam_warm_up` is an IGAM
step before --igam_start_step (cross-entropy only), `igam_xla` one compiled with XLA
(--jit_compile), `*_fd` with --double_backprop=finite_difference; the last lines give IGAM's cost
over PGD-k's per step and amortized over the authors' schedule (IGAM terms from step
280k of 320k).
"""

import os
import sys
import time

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from igam_tf import baselines  # pylint: disable=g-import-not-at-top
from igam_tf.architectures import build_classifier
from igam_tf.discriminator import build_discriminator
from igam_tf.igam import IGAM
from igam_tf.teacher import Teacher


def define_flags():
  flags.DEFINE_string('architecture', 'madry_resnet', 'Student architecture.')
  flags.DEFINE_list('filters', ['16', '16', '32', '64'], 'Student widths.')
  flags.DEFINE_integer('image_size', 32, 'Square image size (3 channels).')
  flags.DEFINE_integer('batch_size', 32, 'Batch size.')
  flags.DEFINE_integer('steps', 10, 'Timed steps per method (after 2 warm-up steps).')
  flags.DEFINE_integer('pgd_steps', 7, 'PGD steps of adversarial training.')
  flags.DEFINE_integer('train_steps', 320000, 'The schedule amortized over: its length...')
  flags.DEFINE_integer('igam_start_step', 280000, '...and the step IGAM\'s terms start.')


def seconds_per_step(model, images, labels, steps):
  for _ in range(2):  # trace and warm up
    model.train_on_batch(images, labels)
  start = time.perf_counter()
  for _ in range(steps):
    model.train_on_batch(images, labels)
  return (time.perf_counter() - start) / steps


def main(argv):
  del argv
  f = flags.FLAGS
  shape = (f.image_size, f.image_size, 3)
  images = tf.constant(np.random.RandomState(0).rand(f.batch_size, *shape), tf.float32)
  labels = tf.constant(np.random.RandomState(1).randint(0, 10, f.batch_size))
  student = lambda: build_classifier(f.architecture, 10, shape, activation='softplus',
                                     filters=tuple(int(w) for w in f.filters),
                                     units_per_stage=1)
  # Table 1's teacher: the Madry MNIST CNN, seeing CIFAR-sized images through a transform.
  teacher = Teacher(build_classifier('madry_mnist', 10, (28, 28, 1)), 10,
                    'channel_average,center_crop:28')
  teacher(images[:1])
  sgd = lambda: keras.optimizers.SGD(0.01, momentum=0.9)
  methods = {
      'standard': baselines.StandardTraining(student()),
      f'pgd{f.pgd_steps}_at': baselines.PGDAdversarialTraining(
          student(), epsilon=8 / 255, step_size=2 / 255, steps=f.pgd_steps),
      'grad_norm': baselines.GradientNormPenalty(student(), penalty_weight=1.0),
      'igam': IGAM(student(), teacher, build_discriminator(3, 16),
                   gradient_window=teacher.transform.gradient_window(shape)),
      'igam_warm_up': IGAM(student(), teacher, build_discriminator(3, 16),
                           gradient_window=teacher.transform.gradient_window(shape),
                           igam_start_step=10**9),
      'igam_xla': IGAM(student(), teacher, build_discriminator(3, 16),
                       gradient_window=teacher.transform.gradient_window(shape)),
      'igam_fd': IGAM(student(), teacher, build_discriminator(3, 16),
                      gradient_window=teacher.transform.gradient_window(shape),
                      double_backprop='finite_difference'),
      'grad_norm_fd': baselines.GradientNormPenalty(student(), penalty_weight=1.0,
                                                    double_backprop='finite_difference'),
  }
  for name, model in methods.items():
    jit = name.endswith('_xla')  # --jit_compile
    if name.startswith('igam'):
      model.compile(sgd(), sgd(), jit_compile=jit)
    else:
      model.compile(optimizer=sgd(), jit_compile=jit)
  timings = {name: seconds_per_step(model, images, labels, f.steps)
             for name, model in methods.items()}
  print(f'{f.architecture} {",".join(f.filters)} student, batch {f.batch_size}, '
        f'{f.image_size}x{f.image_size}x3, {f.steps} steps each:')
  for name, seconds in timings.items():
    print(f'  {name:12s} {seconds * 1000:8.1f} ms/step  {seconds / timings["standard"]:5.2f}x '
          f'standard')
  pgd = timings[f'pgd{f.pgd_steps}_at']
  warm_up = f.igam_start_step / f.train_steps
  amortized = warm_up * timings['igam_warm_up'] + (1 - warm_up) * timings['igam']
  print(f'igam/pgd{f.pgd_steps} per step: {timings["igam"] / pgd:.2f}')
  print(f'igam/pgd{f.pgd_steps} amortized: {amortized / pgd:.2f} (IGAM terms from step '
        f'{f.igam_start_step} of {f.train_steps})')


if __name__ == '__main__':
  define_flags()
  app.run(main)
