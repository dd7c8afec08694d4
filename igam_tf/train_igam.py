"""Trains a student with IGAM (Section 4.2, Algorithm 1's second loop).

  python -m igam_tf.train_igam --flagfile=flags/table1_igam_mnist_cifar10.cfg

The teacher is a folder written by igam_tf.finetune_teacher. The student's loss is
xent + weight_decay * L2 - adv_weight * disc_xent + diff_weight * L_diff; the
discriminator minimizes disc_xent. See igam_tf/igam.py for the details and the
choices of the authors' code they follow.
"""

from absl import flags

from igam_tf import experiments
from igam_tf import flag_groups
from igam_tf import igam
from igam_tf import input_gradients


def define_flags():
  flags.DEFINE_string('teacher', None, 'A finetuned teacher folder (igam_tf.finetune_teacher), '
                      'or madry_mnist:PATH / madry_cifar10:PATH: a MadryLab-layout TF1 '
                      'checkpoint whose head was finetuned elsewhere (e.g. the IGAM authors\' '
                      'target_task_logit teachers).')
  flags.DEFINE_string('teacher_transform', '', 'With a checkpoint --teacher only: the input '
                      'transform from target images to its input, e.g. '
                      'channel_average,center_crop:28 (a teacher folder holds its own).')
  flags.DEFINE_enum('gradient_of', 'xent', input_gradients.GRADIENT_OF,
                    'xent: the paper\'s text; true_prob: the authors\' code.')
  flags.DEFINE_float('adv_weight', 1.0, 'Weight of L_adv (the paper\'s Table 5).',
                     lower_bound=0.0)
  flags.DEFINE_float('diff_weight', 10.0, 'Weight of L_diff (the paper\'s Table 4), gradients '
                     'on the 0..255 scale summed over the batch, as the authors\'.',
                     lower_bound=0.0)
  flags.DEFINE_integer('disc_every', 1, 'One discriminator step per this many student steps.',
                       lower_bound=1)
  flags.DEFINE_enum('disc_update', 'accumulate', igam.DISC_UPDATES, 'With --disc_every > 1: '
                    'accumulate (the mean of those steps\' gradients, applied once) or '
                    'current_batch (the authors\': one step on that step\'s batch).')
  flags.DEFINE_enum('diff_window', 'crop', igam.DIFF_WINDOWS, 'With a center_crop teacher '
                    'transform: L_diff on the cropped maps, as the discriminator (crop), or on '
                    'the whole maps (full).')
  flags.DEFINE_integer('igam_start_step', 0, 'Cross-entropy-only steps before IGAM starts.',
                       lower_bound=0)
  flag_groups.define_teacher_bn_flag()
  flags.DEFINE_integer('disc_blocks', 4, 'Discriminator conv blocks.', lower_bound=1)
  flags.DEFINE_integer('disc_filters', 8, 'Filters of the first block (doubling each block).')
  flag_groups.define_student_flags()
  flag_groups.define_optimizer_flags()
  flag_groups.define_optimizer_flags('disc_', optimizer='momentum', learning_rate=0.1,
                                     weight_decay=0.0, help_owner='the discriminator')
  flag_groups.define_data_flags()
  flag_groups.define_run_flags()
  flags.mark_flag_as_required('teacher')


@flag_groups.reports_errors
def main(argv):
  del argv
  f = flags.FLAGS
  settings = experiments.IGAMSettings(
      gradient_of=f.gradient_of, adv_weight=f.adv_weight, diff_weight=f.diff_weight,
      disc_every=f.disc_every, disc_update=f.disc_update, diff_window=f.diff_window,
      igam_start_step=f.igam_start_step, teacher_bn=f.teacher_bn, disc_blocks=f.disc_blocks,
      disc_filters=f.disc_filters, disc_optimizer=flag_groups.optimizer_settings(f, 'disc_'))
  experiments.train_igam(
      flag_groups.student_spec(f), f.teacher, flag_groups.data_settings(f),
      flag_groups.optimizer_settings(f, architecture=f.student_architecture), settings,
      flag_groups.run_settings(f), teacher_transform=f.teacher_transform)
  print(f'IGAM student saved to {f.model_dir}')


def run():
  """`python -m igam_tf.train_igam`, also the console script `igam-train-igam`
  (pyproject.toml)."""
  flag_groups.run_binary(__name__, define_flags, main)


if __name__ == '__main__':
  run()
