r"""Finetunes a teacher on the target task (Section 4.1, Algorithm 1's first loop).

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
from igam_tf import settings


def define_flags():
  flag_groups.define_job_flags(settings.FinetuneJob)
  flags.adopt_module_key_flags(flag_groups)  # so that --help lists them
  flags.mark_flag_as_required('source')


@flag_groups.reports_errors
def main(argv):
  del argv
  job = flag_groups.job_from_flags(settings.FinetuneJob, flags.FLAGS)
  experiments.finetune_teacher(job)
  print(f'Finetuned teacher saved to {job.run.model_dir}')


def run():
  """`python -m igam_tf.finetune_teacher`, also the console script `igam-finetune-teacher`
  (pyproject.toml)."""
  flag_groups.run_binary(__name__, define_flags, main)


if __name__ == '__main__':
  run()
