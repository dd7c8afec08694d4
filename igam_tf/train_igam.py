"""Trains a student with IGAM (Section 4.2, Algorithm 1's second loop).

  python -m igam_tf.train_igam --flagfile=flags/table1/igam_mnist_cifar10.cfg

The teacher is a folder written by igam_tf.finetune_teacher. The student's loss is
xent + weight_decay * L2 - adv_weight * disc_xent + diff_weight * L_diff; the
discriminator minimizes disc_xent. See igam_tf/igam.py for the details and the
choices of the authors' code they follow.
"""

from absl import flags

from igam_tf import experiments
from igam_tf import flag_groups
from igam_tf import settings


def define_flags():
  flag_groups.define_job_flags(settings.IGAMJob)  # every option of an IGAM job
  flags.adopt_module_key_flags(flag_groups)  # so that --help lists them
  flags.mark_flag_as_required('teacher')


@flag_groups.reports_errors
def main(argv):
  del argv
  job = flag_groups.job_from_flags(settings.IGAMJob, flags.FLAGS)
  experiments.train_igam(job)
  print(f'IGAM student saved to {job.run.model_dir}')


def run():
  """`python -m igam_tf.train_igam`, also the console script `igam-train-igam`
  (pyproject.toml)."""
  flag_groups.run_binary(__name__, define_flags, main)


if __name__ == '__main__':
  run()
