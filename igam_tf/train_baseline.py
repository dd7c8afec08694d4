"""Trains a baseline: standard, PGD adversarial training, logit-only finetuning, or the
input-gradient norm penalty (IGAM's L_diff with a zero teacher).

  python -m igam_tf.train_baseline --method=pgd_at --flagfile=flags/table1_pgd7_cifar10.cfg

--method=finetune is igam_tf.finetune_teacher (its --source and --transform).
"""

from absl import flags

from igam_tf import baselines
from igam_tf import experiments
from igam_tf import flag_groups
from igam_tf import input_gradients


def define_flags():
  flags.DEFINE_enum('method', None, experiments.METHODS, 'The baseline.')
  flags.DEFINE_float('epsilon', 8 / 255, 'pgd_at: L-inf radius on the [0, 1] scale.',
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer('pgd_steps', 7, 'pgd_at: PGD steps.', lower_bound=1)
  flags.DEFINE_float('pgd_step_size', 2 / 255, 'pgd_at: PGD step size.')
  flag_groups.register_positive('pgd_step_size')
  flags.DEFINE_enum('pgd_bn', 'moving', baselines.PGD_BN, 'pgd_at: BN while the training '
                    'attacks are crafted: moving (inference mode) or batch (the batch\'s '
                    'statistics, as Madry\'s code).')
  flags.DEFINE_float('penalty_weight', 10.0, 'grad_norm: weight of ||J||^2 (as --diff_weight '
                     'of train_igam).', lower_bound=0.0)
  flags.DEFINE_enum('gradient_of', 'xent', input_gradients.GRADIENT_OF, 'grad_norm: J of what.')
  flags.DEFINE_integer('penalty_start_step', 0, 'grad_norm: cross-entropy-only steps before '
                       'the penalty starts (IGAM\'s --igam_start_step, for a control on '
                       'IGAM\'s schedule).', lower_bound=0)
  flags.DEFINE_string('source', None, 'finetune: the source model (see finetune_teacher).')
  flags.DEFINE_string('transform', '', 'finetune: the input transform.')
  flag_groups.define_teacher_bn_flag()
  flag_groups.define_student_flags()
  flag_groups.define_optimizer_flags()
  flag_groups.define_data_flags()
  flag_groups.define_run_flags()
  flags.mark_flag_as_required('method')
  flags.register_multi_flags_validator(
      ['method', 'source', 'transform'],
      lambda v: v['method'] == 'finetune' or not (v['source'] or v['transform']),
      message='--source and --transform are for --method=finetune only; the other methods '
              'train a student from scratch (leave them unset)')
  flags.register_multi_flags_validator(
      ['method', 'source'], lambda v: v['method'] != 'finetune' or bool(v['source']),
      message='--method=finetune needs --source')


@flag_groups.reports_errors
def main(argv):
  del argv
  f = flags.FLAGS
  if f.method == 'finetune':
    # Finetuning uses Adam at 1e-3 (Section 4.1) unless --learning_rate is given.
    learning_rate = f.learning_rate if f.learning_rate is not None else 1e-3
    experiments.finetune_teacher(f.source, f.transform, flag_groups.data_settings(f),
                                 flag_groups.run_settings(f), learning_rate=learning_rate,
                                 teacher_bn=f.teacher_bn)
  else:
    baseline = experiments.BaselineSettings(
        epsilon=f.epsilon, pgd_steps=f.pgd_steps, pgd_step_size=f.pgd_step_size,
        pgd_bn=f.pgd_bn, penalty_weight=f.penalty_weight, gradient_of=f.gradient_of,
        penalty_start_step=f.penalty_start_step)
    experiments.train_baseline(
        f.method, flag_groups.student_spec(f), flag_groups.data_settings(f),
        flag_groups.optimizer_settings(f, architecture=f.student_architecture), baseline,
        flag_groups.run_settings(f))
  print(f'{f.method} model saved to {f.model_dir}')


def run():
  """`python -m igam_tf.train_baseline`, also the console script `igam-train-baseline`
  (pyproject.toml)."""
  flag_groups.run_binary(__name__, define_flags, main)


if __name__ == '__main__':
  run()
