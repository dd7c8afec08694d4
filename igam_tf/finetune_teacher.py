"""Finetunes a teacher on the target task (Section 4.1, Algorithm 1's first loop).

  python -m igam_tf.finetune_teacher --source=madry_mnist:models/adv_trained \
      --transform=channel_average,center_crop:28 --dataset=cifar10 \
      --model_dir=runs/teacher_mnist_cifar10

The source (a MadryLab checkpoint, or any model folder this project trained) is
frozen (its BN as --teacher_bn says: the moving averages by default, or each batch's
statistics as the IGAM authors' code); a new K-way logit layer (and the transform's own
weights, for transpose_conv) is trained with Adam. The teacher is saved to
--model_dir for train_igam, export and evaluate.
"""

from absl import flags

from igam_tf import experiments
from igam_tf import flag_groups


def define_flags():
  flags.DEFINE_string('source', None, 'madry_mnist:PATH, madry_cifar10:PATH (a TF1 '
                      'checkpoint folder or prefix) or a model folder this project trained.')
  flags.DEFINE_string('transform', '', 'Input transform from target images to the source\'s '
                      'input, e.g. channel_average,center_crop:28 (see igam_tf/transforms.py).')
  flags.DEFINE_float('learning_rate', 1e-3, 'Adam learning rate of the new head.')
  flag_groups.register_positive('learning_rate')
  flags.DEFINE_integer('source_num_classes', None, 'Classes of a Madry source checkpoint\'s '
                       'head; unset: read from the checkpoint.')
  flag_groups.define_teacher_bn_flag()
  flag_groups.define_data_flags(default_batch_size=64)
  flag_groups.define_run_flags(default_steps=4700, default_checkpoint_every=470)
  flags.mark_flag_as_required('source')


@flag_groups.reports_errors
def main(argv):
  del argv
  f = flags.FLAGS
  experiments.finetune_teacher(f.source, f.transform, flag_groups.data_settings(f),
                               flag_groups.run_settings(f), learning_rate=f.learning_rate,
                               source_num_classes=f.source_num_classes,
                               teacher_bn=f.teacher_bn)
  print(f'Finetuned teacher saved to {f.model_dir}')


def run():
  """`python -m igam_tf.finetune_teacher`, also the console script `igam-finetune-teacher`
  (pyproject.toml)."""
  flag_groups.run_binary(__name__, define_flags, main)


if __name__ == '__main__':
  run()
