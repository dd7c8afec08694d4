"""From an attack's name or `AttackSpec` to its core: the one module that imports every
attack family, so that any attack runs by name once `igam_tf.attacks` is imported.
"""

import tensorflow as tf

from igam_tf.attacks import autoattack
from igam_tf.attacks import autopgd
from igam_tf.attacks import names
from igam_tf.attacks import ops
from igam_tf.attacks import pgd

# The AutoAttack attacks that run alone by name, with the ensemble's other settings.
_STAGES = ('apgd_t', 'fab_t', 'square')


def adversarial_core(spec, model, images, labels, eps, step_size, restarts, seed,
                     example_ids, compiled=True):
  """The unchecked adversarial examples of `spec` (all arguments but `spec` tensors);
  `compiled=False` traces the attack into the calling function.

  APGD-T, FAB-T and Square by name take their iterations (queries) from the spec and
  their other settings from `autoattack.STANDARD`, as the ensembles do.
  """
  if spec.method == 'clean':
    return images
  if spec.method == 'fgsm':
    core = pgd.compiled_fgsm if compiled else pgd.fgsm_core
    return core(model, images, labels, eps)
  if spec.method == 'pgd':
    core = pgd.compiled_pgd if compiled else pgd.pgd_core
    return core(model, images, labels, eps, step_size, tf.constant(spec.steps), restarts,
                seed, example_ids, norm=spec.norm, loss=spec.loss,
                random_start=spec.random_start)
  if spec.method == 'apgd':
    core = autopgd.compiled_apgd if compiled else autopgd.apgd_core
    return core(model, images, labels, eps, tf.constant(spec.steps), restarts, seed,
                example_ids, tf.constant(0.75), norm=spec.norm, loss=spec.loss)
  if spec.method in names.ENSEMBLE_VERSIONS:
    core = autoattack.compiled_ensemble if compiled else autoattack.ensemble_core
    return core(model, images, labels, eps, restarts, seed, example_ids,
                autoattack.STANDARD.tensors(),
                stages=autoattack.VERSIONS[names.ENSEMBLE_VERSIONS[spec.method]])
  if spec.method in _STAGES:
    settings = autoattack.STANDARD.with_budget(spec.method, spec.steps)
    return autoattack.stage_core(spec.method, model, images, labels, eps, restarts, seed,
                                 example_ids, settings.tensors(), compiled=compiled)
  raise ValueError(f'Unknown attack method {spec.method!r}')


def run_attack(attack, model, images, labels, eps=ops.LINF_EPS, step_size=None, restarts=1,
               seed=0, example_ids=None):
  """Runs an attack given by name or `AttackSpec` on one batch; returns checked examples."""
  spec = names.as_spec(attack)
  step_size = spec.default_step_size(eps) if step_size is None else step_size
  ops.check_settings(eps, step_size, spec.steps, restarts)
  images, labels, example_ids = ops.batch_inputs(images, labels, example_ids)
  adversarial = adversarial_core(
      spec, model, images, labels, tf.cast(eps, tf.float32), tf.cast(step_size, tf.float32),
      tf.cast(restarts, tf.int32), tf.cast(seed, tf.int64), example_ids)
  return ops.checked(images, adversarial, eps, spec.norm)
