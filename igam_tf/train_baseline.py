"""Trains a baseline: standard, PGD adversarial training, logit-only finetuning, or the
input-gradient norm penalty (IGAM's L_diff with a zero teacher).

  python -m igam_tf.train_baseline --method=pgd_at --flagfile=flags/table1/pgd7_cifar10.cfg

--method=finetune is igam_tf.finetune_teacher (its --source and --transform).
"""

from absl import flags

from igam_tf import experiments
from igam_tf import flag_groups
from igam_tf import settings


def define_flags():
  flag_groups.define_job_flags(settings.BaselineJob)
  # --method=finetune's own options (--source, --transform, ...); it shares the rest.
  flag_groups.define_job_flags(settings.FinetuneJob)
  flags.adopt_module_key_flags(flag_groups)  # so that --help lists them
  flags.mark_flag_as_required('method')
  flags.register_multi_flags_validator(
      ['method', 'source', 'transform', 'source_num_classes'],
      lambda v: v['method'] == 'finetune' or not (v['source'] or v['transform']
                                                  or v['source_num_classes']),
      message='--source, --transform and --source_num_classes are for --method=finetune '
              'only; the other methods train a student of --student_architecture (leave them '
              'unset)')
  flags.register_multi_flags_validator(
      ['method', 'source'], lambda v: v['method'] != 'finetune' or bool(v['source']),
      message='--method=finetune needs --source')


@flag_groups.reports_errors
def main(argv):
  del argv
  f = flags.FLAGS
  finetune = f.method == 'finetune'
  job_class, other = ((settings.FinetuneJob, settings.BaselineJob) if finetune
                      else (settings.BaselineJob, settings.FinetuneJob))
  flag_groups.refuse_unused_flags(job_class, [other], f, f'--method={f.method}', 'method')
  job = flag_groups.job_from_flags(job_class, f)
  if finetune:  # Adam at 1e-3 (Section 4.1) unless --learning_rate is given
    experiments.finetune_teacher(job)
  else:
    experiments.train_baseline(job)
  print(f'{f.method} model saved to {job.run.model_dir}')


def run():
  """`python -m igam_tf.train_baseline`, also the console script `igam-train-baseline`
  (pyproject.toml)."""
  flag_groups.run_binary(__name__, define_flags, main)


if __name__ == '__main__':
  run()
