"""White-box and black-box attacks and robust accuracy, on the [0, 1] pixel scale.

Attacks work on any Keras classifier (always called with `training=False`) or any callable
`images -> logits` (a SavedModel function returning {'logits': ...} works too). The batch
functions (`fgsm`, `pgd_linf`, `pgd_l2`, `apgd`, `apgd_t`, `fab_t`, `square`, `ensemble`,
`run_attack`) are `tf.function`s traced once per model, attack kind and input shape:
eps, budgets, restarts and seeds are passed as tensors, and they also run inside a
caller's `tf.function` or `strategy.run`. `attack_dataset`, `robust_accuracy` and
`run_autoattack` spread batches over a `tf.distribute` strategy. Randomness depends only
on (seed, run, example id); every adversarial example is checked against the threat model
before it is returned or scored (a broken attack raises `AttackError`).

The modules, each importing only those above it:
  names          the attack-name grammar (`parse_attack`), budgets, display names
  ops            shared operations: losses, projection, stateless noise, bounds checks
  pgd            FGSM and PGD
  autopgd        APGD (CE, DLR) and APGD-T
  fab            FAB-T
  square_attack  Square
  checks         AutoAttack's sanity checks
  passes         one pass of a per-batch attack over a dataset
  autoattack     the AutoAttack ensembles, on a batch and over a dataset
  dispatch       from an attack name to its core (`run_attack`)
  datasets       attacks over a dataset (`attack_dataset`, `robust_accuracy`)
Every name below is importable from `igam_tf.attacks` itself. The ensembles' default
settings are `autoattack.STANDARD`: replace that module attribute, not this package's
copy, to change them.
"""

from igam_tf.attacks.autoattack import AutoAttackResult
from igam_tf.attacks.autoattack import ENSEMBLE_NAMES
from igam_tf.attacks.autoattack import ensemble
from igam_tf.attacks.autoattack import run_autoattack
from igam_tf.attacks.autoattack import Settings
from igam_tf.attacks.autoattack import STAGE_NAMES
from igam_tf.attacks.autoattack import STANDARD
from igam_tf.attacks.autoattack import VERSIONS
from igam_tf.attacks.autopgd import apgd
from igam_tf.attacks.autopgd import apgd_t
from igam_tf.attacks.autopgd import targeted_dlr_loss
from igam_tf.attacks.checks import check_model
from igam_tf.attacks.checks import gradient_flags
from igam_tf.attacks.checks import gradient_warning
from igam_tf.attacks.checks import probability_warning
from igam_tf.attacks.checks import randomness_warning
from igam_tf.attacks.checks import square_warning
from igam_tf.attacks.datasets import accuracies
from igam_tf.attacks.datasets import attack_dataset
from igam_tf.attacks.datasets import attack_results
from igam_tf.attacks.datasets import AttackResult
from igam_tf.attacks.datasets import robust_accuracy
from igam_tf.attacks.dispatch import run_attack
from igam_tf.attacks.fab import fab_t
from igam_tf.attacks.fab import project_linf
from igam_tf.attacks.names import APGD_STEPS
from igam_tf.attacks.names import ATTACKS
from igam_tf.attacks.names import AttackSpec
from igam_tf.attacks.names import AUTOATTACK_METHODS
from igam_tf.attacks.names import DEFAULT_ATTACKS
from igam_tf.attacks.names import parse_attack
from igam_tf.attacks.ops import AttackError
from igam_tf.attacks.ops import BOUND_TOLERANCE
from igam_tf.attacks.ops import check_adversarial
from igam_tf.attacks.ops import LINF_EPS
from igam_tf.attacks.ops import logits_of
from igam_tf.attacks.ops import LOSSES
from igam_tf.attacks.ops import margin
from igam_tf.attacks.ops import NORMS
from igam_tf.attacks.ops import NUM_TARGETS
from igam_tf.attacks.ops import per_example_loss
from igam_tf.attacks.ops import target_classes
from igam_tf.attacks.passes import load_examples
from igam_tf.attacks.pgd import fgsm
from igam_tf.attacks.pgd import pgd_l2
from igam_tf.attacks.pgd import pgd_linf
from igam_tf.attacks.square_attack import square
from igam_tf.attacks.square_attack import square_fraction
from igam_tf.attacks.square_attack import square_size
