"""AutoAttack (Croce & Hein, ICML 2020), L-inf, on the [0, 1] pixel scale: its ensembles
on one batch (`ensemble`) and over a dataset (`run_autoattack`). It only orders and
combines attacks that live in their families' modules (APGD-CE and APGD-T in autopgd,
FAB-T in fab, Square in square_attack), and reports the sanity checks of checks.

The ensembles run their attacks in sequence, each on the points no earlier one broke:
  standard (attack 'autoattack')       APGD-CE, APGD-T, FAB-T, Square
  fast     (attack 'autoattack_fast')  APGD-CE, APGD-T
A point is robust only if it survives all of them: the ensemble's accuracy is at most
that of each part. Only the standard version is AutoAttack; the fast one is reported as
"AutoAttack (fast: APGD-CE, APGD-T)" (`ENSEMBLE_NAMES`), never as plain AutoAttack.
Each attack's randomness depends only on (seed, run, example id), so results repeat
exactly and do not depend on the batching or on a `tf.distribute` strategy.
"""

import dataclasses
import time

from absl import logging
import numpy as np
import tensorflow as tf

from igam_tf.attacks import autopgd
from igam_tf.attacks import checks
from igam_tf.attacks import fab
from igam_tf.attacks import names
from igam_tf.attacks import ops
from igam_tf.attacks import passes
from igam_tf.attacks import square_attack

VERSIONS = {'standard': ('apgd_ce', 'apgd_t', 'fab_t', 'square'),
            'fast': ('apgd_ce', 'apgd_t')}
# How reports and progress lines name each version and attack: only the standard
# version is AutoAttack.
ENSEMBLE_NAMES = {version: names.parse_attack(method).display_name
                  for method, version in names.ENSEMBLE_VERSIONS.items()}
STAGE_NAMES = {stage: names.parse_attack(stage).display_name
               for stage in VERSIONS['standard']}
_WHITE_BOX = ('apgd_ce', 'apgd_t', 'fab_t')


@dataclasses.dataclass(frozen=True)
class Settings:
  """An ensemble's settings; the defaults are AutoAttack's standard version.

  Attributes:
    apgd_steps: APGD-CE iterations.
    apgd_t_steps: APGD-T iterations per target.
    fab_steps: FAB-T iterations per target.
    square_queries: Square's queries.
    square_rescale: rescale Square's 10000-iteration schedule of p to `square_queries`
      (the authors' `resc_schedule=True`); False in AutoAttack's standard version.
    num_targets: target classes of APGD-T and FAB-T (at most K - 1 are used).
    rho: APGD's step-halving threshold.
    p_init: Square's initial fraction of pixels per square.
    alpha_max: FAB's largest step towards the clean image.
    eta: FAB's overshoot.
    beta: FAB's backward step.
  """
  apgd_steps: int = names.APGD_STEPS
  apgd_t_steps: int = names.AUTOATTACK_METHODS['apgd_t']
  fab_steps: int = names.AUTOATTACK_METHODS['fab_t']
  square_queries: int = names.AUTOATTACK_METHODS['square']
  square_rescale: bool = False
  num_targets: int = ops.NUM_TARGETS
  rho: float = 0.75
  p_init: float = square_attack.SQUARE_P_INIT
  alpha_max: float = 0.1
  eta: float = 1.05
  beta: float = 0.9

  def tensors(self):
    """The settings as tensors, so that changing them does not retrace."""
    dtypes = {int: tf.int32, bool: tf.bool, float: tf.float32}
    return {field.name: tf.constant(getattr(self, field.name), dtypes[field.type])
            for field in dataclasses.fields(self)}

  def with_budget(self, stage, steps):
    """These settings with `stage`'s iterations (queries for square) set to `steps`."""
    field = {'apgd_ce': 'apgd_steps', 'apgd_t': 'apgd_t_steps', 'fab_t': 'fab_steps',
             'square': 'square_queries'}[stage]
    return dataclasses.replace(self, **{field: steps})


STANDARD = Settings()


def stage_core(stage, model, images, labels, eps, restarts, seed, example_ids, settings,
               compiled=False):
  """One of the ensemble's attacks, unchecked; `settings` holds `Settings.tensors()`.
  `compiled` runs the family's compiled core, else it is traced into the caller."""
  s = settings
  if stage == 'apgd_ce':
    core = autopgd.compiled_apgd if compiled else autopgd.apgd_core
    return core(model, images, labels, eps, s['apgd_steps'], restarts, seed, example_ids,
                s['rho'], norm='linf', loss='ce')
  if stage == 'apgd_t':
    core = autopgd.compiled_apgd_t if compiled else autopgd.apgd_t_core
    return core(model, images, labels, eps, s['apgd_t_steps'], restarts, seed, example_ids,
                s['num_targets'], s['rho'])
  if stage == 'fab_t':
    core = fab.compiled_fab_t if compiled else fab.fab_t_core
    return core(model, images, labels, eps, s['fab_steps'], restarts, seed, example_ids,
                s['num_targets'], s['alpha_max'], s['eta'], s['beta'])
  if stage == 'square':
    core = square_attack.compiled_square if compiled else square_attack.square_core
    return core(model, images, labels, eps, s['square_queries'], restarts, seed,
                example_ids, s['p_init'], s['square_rescale'])
  raise ValueError(f'Unknown AutoAttack stage {stage!r}')


def stages_for(stages, num_classes):
  """Drops APGD-T for fewer than 4 classes (its loss needs z_pi4)."""
  if num_classes is not None and num_classes < 4 and 'apgd_t' in stages:
    logging.warning('APGD-T needs at least 4 classes (the model has %d): skipped.',
                    num_classes)
    return tuple(stage for stage in stages if stage != 'apgd_t')
  return tuple(stages)


def ensemble_core(model, images, labels, eps, restarts, seed, example_ids, settings, *,
                  stages):
  """The attacks in sequence, each on the points no earlier one broke. Returns the clean
  image for the points none broke (as AutoAttack). Unchecked."""
  logits = ops.logits_of(model, images)
  correct = ~ops.misclassified(logits, labels)
  adversarial = images
  for stage in stages_for(stages, logits.shape[-1]):
    active = tf.where(correct)[:, 0]

    def attack(stage=stage, active=active, adversarial=adversarial, correct=correct):
      x, y, ids = ops.gather(active, images, labels, example_ids)
      found = stage_core(stage, model, x, y, eps, restarts, seed, ids, settings)
      broken = ops.misclassified(ops.logits_of(model, found), y)
      return (ops.scatter(adversarial, active, ops.where(broken, found, x)),
              ops.scatter(correct, active, ~broken))

    adversarial, correct = tf.cond(tf.size(active) > 0, attack,
                                   lambda a=adversarial, c=correct: (a, c))
  return adversarial


compiled_ensemble = tf.function(ensemble_core)


def ensemble(model, images, labels, eps, version='standard', settings=None, restarts=1,
             seed=0, example_ids=None):
  """AutoAttack on one batch: the version's attacks in sequence, each on the points no
  earlier attack broke.

  Args:
    model, images, labels, eps, seed, example_ids: as `apgd_t`.
    version: 'standard' (APGD-CE, APGD-T, FAB-T, Square) or 'fast' (APGD-CE, APGD-T).
    settings: a `Settings` (default `STANDARD`).
    restarts: runs per attack (per target for the targeted ones); 1 in AutoAttack.

  Returns:
    float32 adversarial images, checked against the threat model.
  """
  if version not in VERSIONS:
    raise ValueError(f'version must be one of {tuple(VERSIONS)}, got {version!r}')
  images, labels, example_ids, eps_t, restarts_t, seed_t = ops.image_batch_inputs(
      images, labels, eps, 0, restarts, example_ids, seed)
  adversarial = compiled_ensemble(model, images, labels, eps_t, restarts_t, seed_t,
                                  example_ids, (settings or STANDARD).tensors(),
                                  stages=VERSIONS[version])
  return ops.checked(images, adversarial, eps, 'linf')


# Over a dataset.


@dataclasses.dataclass(frozen=True)
class AutoAttackResult:
  """An AutoAttack ensemble over a dataset, in example order.

  Attributes:
    version: 'standard' (AutoAttack) or 'fast' (APGD-CE and APGD-T only: not AutoAttack,
      see `name`).
    eps: the L-inf radius.
    labels: int64 [N].
    correct: bool [N], still correctly classified after every attack.
    after: {'clean', then each attack in order: bool [N] correct after it and all
      before it}.
    seconds: {the same keys: wall-clock seconds it took}.
    warnings: the sanity checks' messages.
    adversarial: float32 [N, H, W, C]: for broken points the example that broke them,
      else the clean image; None unless asked for.
  """
  version: str
  eps: float
  labels: np.ndarray
  correct: np.ndarray
  after: dict
  seconds: dict
  warnings: list
  adversarial: np.ndarray | None = None

  @property
  def name(self):
    """What reports call it: 'AutoAttack' for the standard version only."""
    return ENSEMBLE_NAMES[self.version]

  @property
  def accuracy(self):
    """Robust accuracy in percent."""
    return 100.0 * float(np.mean(self.correct)) if self.correct.size else float('nan')

  @property
  def accuracies(self):
    """{'clean', each attack: accuracy in percent after it (cumulative)}."""
    return {name: 100.0 * float(np.mean(correct)) for name, correct in self.after.items()}

  @property
  def broken_by(self):
    """str [N]: the first attack that broke each point ('clean' if misclassified, '' if
    robust)."""
    first = np.full(self.correct.shape, '', dtype=object)
    previous = np.ones_like(self.correct)
    for name, correct in self.after.items():
      first[previous & ~correct] = name
      previous = correct
    return first


def _report(progress, message):
  """A progress line: printed beside the progress bars, else logged."""
  if progress:
    print(message, flush=True)
  else:
    logging.info(message)


def run_autoattack(model, dataset, eps=ops.LINF_EPS, version='standard',
                   num_examples=None, seed=0, strategy=None, progress=True, batch_size=100,
                   settings=None, restarts=1, keep_adversarial=False):
  """Runs an AutoAttack ensemble over a dataset, one attack at a time over the points
  still robust (as the authors' code), and AutoAttack's sanity checks.

  The first `num_examples` examples are read once (`passes.load_examples`) before the
  clean pass; every attack then works on those arrays, so each attacks exactly the
  examples the clean pass scored, even if the dataset would reshuffle or change on a
  second pass.

  Per example, the result equals `ensemble` on one batch of them (the same seeds and
  example ids); `attacks.attack_dataset(model, dataset, 'autoattack')` runs this.

  Args:
    model: a Keras classifier or a callable images -> logits; under `strategy`, built in
      its scope.
    dataset: (image, label) pairs, batched or not, or a `data.DatasetSplit`; images float
      in [0, 1].
    eps: the L-inf radius on the [0, 1] scale.
    version: 'standard' (AutoAttack) or 'fast' (APGD-CE and APGD-T only).
    num_examples: attack the first this many (None: all).
    seed: fixes every random draw.
    strategy: an optional `tf.distribute.Strategy` that splits each batch over replicas.
    progress: show progress bars.
    batch_size: global batch size.
    settings: a `Settings` (default `STANDARD`).
    restarts: runs per attack (per target for the targeted ones); 1 in AutoAttack.
    keep_adversarial: also return the adversarial examples.

  Returns:
    An `AutoAttackResult`.

  Raises:
    AttackError: an adversarial example outside the threat model, or a white-box attack
      on a model with no input gradient.
  """
  if version not in VERSIONS:
    raise ValueError(f'version must be one of {tuple(VERSIONS)}, got {version!r}')
  ops.check_settings(eps, None, None, restarts)
  settings = settings or STANDARD
  strategy = strategy or tf.distribute.get_strategy()
  passes.check_replicas(strategy, batch_size)
  eps_t, restarts_t, seed_t = (tf.constant(eps, tf.float32), tf.constant(restarts, tf.int32),
                               tf.constant(seed, tf.int64))
  tensors = settings.tensors()
  name = ENSEMBLE_NAMES[version]
  title = 'AutoAttack (standard)' if version == 'standard' else name  # progress lines

  def clean_replica(images, labels, example_ids):
    images, labels = tf.cast(images, tf.float32), tf.cast(labels, tf.int64)
    logits = ops.logits_of(model, images)
    zero, flat = checks.gradient_flags(model, images, labels, eps_t)
    return dict(labels=labels, example_ids=example_ids, zero=zero, flat=flat,
                correct=~ops.misclassified(logits, labels))

  start = time.perf_counter()
  # One pass over the dataset: every attack below sees these examples under these ids.
  all_images, all_labels = passes.load_examples(dataset, num_examples)
  clean = passes.dataset_pass(
      clean_replica, passes.numbered_subset(all_images, all_labels, None, batch_size),
      strategy, eps, progress=progress)
  seconds = {'clean': time.perf_counter() - start}
  after = {'clean': clean['correct'].copy()}
  adversarial = np.array(all_images, np.float32) if keep_adversarial else None

  # The probability and randomness checks look at the first examples.
  check_images = tf.cast(all_images[:checks.CHECK_EXAMPLES], tf.float32)
  repeated = [ops.logits_of(model, check_images).numpy()
              for _ in range(checks.RANDOMNESS_CALLS)]
  warnings = [message for message in (
      checks.probability_warning(repeated[0]),
      checks.randomness_warning(repeated, all_labels[:checks.CHECK_EXAMPLES]),
      checks.gradient_warning(clean['zero'][clean['correct']],
                              clean['flat'][clean['correct']])) if message]

  num_classes = repeated[0].shape[-1]
  stages = stages_for(VERSIONS[version], num_classes)
  if len(stages) < len(VERSIONS[version]):
    warnings.append(f'APGD-T was skipped: it needs at least 4 classes, the model has '
                    f'{num_classes}.')
  for message in warnings:  # now, in case an attack fails
    logging.warning('%s: %s', name, message)
  correct = clean['correct'].copy()
  for stage in stages:
    start = time.perf_counter()
    keep = correct.copy()
    _report(progress, f'{title}: {STAGE_NAMES[stage]} on the '
                      f'{int(keep.sum())} of {keep.size} points still robust')
    if keep.any():

      def stage_replica(images, labels, example_ids, stage=stage):
        images, labels = tf.cast(images, tf.float32), tf.cast(labels, tf.int64)
        real = tf.where(example_ids >= 0)[:, 0]  # the padding is not attacked

        def attack_real():
          x, y, ids = ops.gather(real, images, labels, example_ids)
          return ops.scatter(images, real, stage_core(stage, model, x, y, eps_t,
                                                      restarts_t, seed_t, ids, tensors))

        found = tf.cond(tf.size(real) > 0, attack_real, lambda: images)
        return dict(images=images, adversarial=found, example_ids=example_ids,
                    correct=~ops.misclassified(ops.logits_of(model, found), labels))

      outputs = passes.dataset_pass(
          stage_replica, passes.numbered_subset(all_images, all_labels, keep, batch_size),
          strategy, eps, progress=progress)
      ids = outputs['example_ids']
      correct[ids] = outputs['correct']
      if keep_adversarial:
        broken = ids[~outputs['correct']]
        adversarial[broken] = outputs['adversarial'][~outputs['correct']]
    after[stage] = correct.copy()
    seconds[stage] = time.perf_counter() - start
    _report(progress, f'{title}: robust accuracy {100.0 * correct.mean():.2f}% '
                      f'({int(correct.sum())} of {correct.size}) after {STAGE_NAMES[stage]}, '
                      f'{seconds[stage]:.1f} s')

  if 'square' in after:
    white_box = [stage for stage in after if stage in _WHITE_BOX]
    message = checks.square_warning(after[white_box[-1]] if white_box else after['clean'],
                                    after['square'])
    if message:
      warnings.append(message)
      logging.warning('%s: %s', name, message)
  return AutoAttackResult(version=version, eps=float(eps), labels=clean['labels'],
                          correct=correct, after=after, seconds=seconds, warnings=warnings,
                          adversarial=adversarial)

