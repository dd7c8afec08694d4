"""Checks for gradient masking: signs that white-box attacks, not the model, failed.

A model whose gradients are masked (zero, shattered or misleading) looks robust to
gradient attacks without being robust. These are the sanity checks of Carlini et al.,
"On Evaluating Adversarial Robustness" (2019), and AutoAttack's zero-gradient check,
run cheaply on the first few hundred examples:

  steps           PGD accuracy must not rise as the steps grow (PGD-5, -20, -50).
  single_step     FGSM must not beat PGD-20: one step cannot be stronger than twenty.
  epsilon         accuracy must not rise as eps grows (clean, PGD-20 at eps x 0.5, 1, 2
                  and at the large eps).
  large_epsilon   PGD-20 at a large eps (0.5 L-inf: the ball then holds a mid-gray
                  image) must bring accuracy to about zero.
  apgd            APGD-CE must not be much weaker than PGD-20.
  transfer        PGD-20 examples crafted on another model must not beat the white-box
                  attacks (their per-example worst case).
  zero_gradients  few examples may have an all-zero input gradient: gradient attacks
                  cannot move them.
  outputs         the model must return logits: on probabilities (a softmax at its end)
                  the attacks' losses saturate (AutoAttack's own check, run whatever the
                  attacks).

"Rise" and "weaker" allow `tolerance` percentage points: attacks on the same examples
differ by a few examples even without masking (PGD keeps its last iterate, not its
best). Each check gives a `Finding` whose message names the numbers it judged.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from igam_tf import attacks

STEP_SWEEP = (5, 20, 50)
EPSILON_FACTORS = (0.5, 1.0, 2.0)
SWEEP_STEPS = 20  # PGD steps of the eps sweep, the large eps and the transfer attack
LARGE_EPSILON = 0.5
MAX_LARGE_EPSILON_ACCURACY = 5.0  # percent
MAX_ZERO_GRADIENT_PERCENT = 1.0
TOLERANCE = 2.0  # percentage points
NUM_EXAMPLES = 500
CHECKS = ('steps', 'single_step', 'epsilon', 'large_epsilon', 'apgd', 'transfer',
          'zero_gradients', 'outputs')


@dataclasses.dataclass(frozen=True)
class Finding:
  """One check's verdict: `suspicious` findings are reported as warnings."""
  check: str
  suspicious: bool
  message: str


@dataclasses.dataclass(frozen=True)
class MaskingReport:
  """The checks' findings and the accuracies (percent) they were judged on."""
  findings: tuple
  measurements: dict

  @property
  def warnings(self):
    return [finding.message for finding in self.findings if finding.suspicious]

  def to_json(self):
    return {'measurements': self.measurements,
            'findings': [dataclasses.asdict(finding) for finding in self.findings]}


def _percent(value):
  return f'{value:.1f}%'


def _rises(accuracies, tolerance):
  """(smaller setting, larger setting) pairs where accuracy rose by more than tolerance,
  for [(setting, accuracy)] in increasing order of attack strength."""
  return [(weaker, stronger) for i, (stronger, accuracy) in enumerate(accuracies)
          for weaker, earlier in accuracies[:i] if accuracy > earlier + tolerance]


def check_steps(accuracy_by_steps, tolerance=TOLERANCE):
  """`accuracy_by_steps`: {PGD steps: accuracy %} at one eps."""
  pairs = sorted(accuracy_by_steps.items())
  numbers = ', '.join(f'PGD-{steps} {_percent(accuracy)}' for steps, accuracy in pairs)
  rises = _rises(pairs, tolerance)
  if rises:
    fewer, more = rises[0]
    return Finding('steps', True,
                   f'accuracy rises with more PGD steps ({numbers}): PGD-{more} is weaker than '
                   f'PGD-{fewer} by more than {tolerance:g} points, so the attack does not '
                   f'converge; suspect gradient masking')
  return Finding('steps', False, f'accuracy does not rise with more PGD steps ({numbers})')


def check_single_step(fgsm_accuracy, pgd_accuracy, pgd_steps=SWEEP_STEPS,
                      tolerance=TOLERANCE):
  numbers = f'FGSM {_percent(fgsm_accuracy)}, PGD-{pgd_steps} {_percent(pgd_accuracy)}'
  if fgsm_accuracy < pgd_accuracy - tolerance:
    return Finding('single_step', True,
                   f'a single step beats the iterative attack ({numbers}): gradients that '
                   f'mislead locally; suspect gradient masking')
  return Finding('single_step', False, f'the iterative attack is at least as strong as one '
                 f'step ({numbers})')


def check_epsilon(accuracy_by_epsilon, tolerance=TOLERANCE):
  """`accuracy_by_epsilon`: {eps: accuracy %}, eps 0 meaning clean."""
  pairs = sorted(accuracy_by_epsilon.items())
  numbers = ', '.join(f'eps {eps:.4g}: {_percent(accuracy)}' for eps, accuracy in pairs)
  rises = _rises(pairs, tolerance)
  if rises:
    smaller, larger = rises[0]
    return Finding('epsilon', True,
                   f'accuracy rises with a larger eps ({numbers}): eps {larger:.4g} does worse '
                   f'than eps {smaller:.4g} by more than {tolerance:g} points although its ball '
                   f'holds every point of the smaller one; suspect gradient masking')
  return Finding('epsilon', False, f'accuracy falls as eps grows ({numbers})')


def check_large_epsilon(epsilon, accuracy, max_accuracy=MAX_LARGE_EPSILON_ACCURACY,
                        steps=SWEEP_STEPS):
  numbers = f'PGD-{steps} at eps {epsilon:.4g}: {_percent(accuracy)}'
  if accuracy > max_accuracy:
    return Finding('large_epsilon', True,
                   f'accuracy stays above {max_accuracy:g}% at a large eps ({numbers}), where '
                   f'an attack that works should reach about 0%; suspect gradient masking')
  return Finding('large_epsilon', False, f'accuracy reaches about 0% at a large eps '
                 f'({numbers})')


def check_apgd(apgd_accuracy, pgd_accuracy, pgd_steps=SWEEP_STEPS, tolerance=TOLERANCE):
  numbers = f'APGD-CE {_percent(apgd_accuracy)}, PGD-{pgd_steps} {_percent(pgd_accuracy)}'
  if apgd_accuracy > pgd_accuracy + tolerance:
    return Finding('apgd', True,
                   f'APGD is much weaker than PGD ({numbers}); APGD adapts its step to the '
                   f'loss, so the loss surface misleads it: suspect gradient masking')
  return Finding('apgd', False, f'APGD is not weaker than PGD ({numbers})')


def check_transfer(transfer_accuracy, white_box_accuracy, source_name,
                   only_transfer_broke=0, tolerance=TOLERANCE):
  numbers = (f'transfer from {source_name} {_percent(transfer_accuracy)}, white-box worst case '
             f'{_percent(white_box_accuracy)}; {only_transfer_broke} examples broken only by '
             f'the transfer')
  if transfer_accuracy < white_box_accuracy - tolerance:
    return Finding('transfer', True,
                   f'a transfer attack beats the white-box attacks ({numbers}): the model\'s '
                   f'own gradients mislead its attackers; suspect gradient masking')
  return Finding('transfer', False, f'the white-box attacks beat the transfer attack '
                 f'({numbers})')


def check_zero_gradients(num_zero, num_examples, max_percent=MAX_ZERO_GRADIENT_PERCENT):
  percent = 100.0 * num_zero / max(num_examples, 1)
  numbers = f'{num_zero} of {num_examples} examples ({_percent(percent)})'
  if percent > max_percent:
    return Finding('zero_gradients', True,
                   f'{numbers} have an all-zero input gradient, more than {max_percent:g}%: '
                   f'gradient attacks cannot move them and their robustness is unverified '
                   f'(use a transfer or gradient-free attack)')
  return Finding('zero_gradients', False, f'{numbers} have an all-zero input gradient')


def check_outputs(outputs):
  """`outputs`: the model's outputs [N, classes] on clean examples."""
  message = attacks.probability_warning(outputs)
  if message:
    return Finding('outputs', True, message)
  return Finding('outputs', False, f'the outputs on {len(outputs)} examples are logits, not '
                 'probabilities')


def require_input_gradient(model, dataset, num_examples=8):
  """Raises AttackError if `model` gives no gradient at all with respect to its input (a
  non-differentiable op such as tf.round): gradient attacks cannot evaluate it. Eager,
  so the error is not buried in a traced attack's."""
  images, labels = next(iter(_take(dataset, num_examples).batch(num_examples)))
  images = tf.cast(images, tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(images)
    loss = tf.reduce_sum(attacks.per_example_loss(attacks.logits_of(model, images),
                                                  tf.cast(labels, tf.int64)))
  if tape.gradient(loss, images) is None:
    raise attacks.AttackError(
        'The model gives no gradient with respect to its input images (a '
        'non-differentiable op such as tf.round?): gradient attacks cannot evaluate it, so '
        'its robustness is unverified; attack a differentiable approximation (BPDA) or '
        'use a transfer attack.')


def _take(dataset, num_examples):
  dataset = getattr(dataset, 'dataset', dataset)  # a data.DatasetSplit
  if dataset.element_spec[0].shape.rank == 4:
    dataset = dataset.unbatch()
  return dataset.take(num_examples)


def run_checks(model, dataset, epsilon, *, step_size=None, num_examples=NUM_EXAMPLES,
               large_epsilon=LARGE_EPSILON, tolerance=TOLERANCE,
               max_large_epsilon_accuracy=MAX_LARGE_EPSILON_ACCURACY,
               max_zero_gradient_percent=MAX_ZERO_GRADIENT_PERCENT, transfer_source=None,
               transfer_name='the source model', seed=0, strategy=None, batch_size=100,
               progress=True):
  """Runs every check on the first `num_examples` examples, one restart per attack.

  Args:
    model: a Keras classifier or a callable images -> logits (as `attacks` takes).
    dataset: (image, label) pairs, batched or not, or a `data.DatasetSplit`.
    epsilon: the L-inf radius the model is evaluated at.
    step_size: PGD step at `epsilon` (None: eps / 4); scaled with eps in the sweeps.
    num_examples: how many examples the checks attack.
    large_epsilon: the radius where accuracy must reach about zero (> epsilon).
    tolerance: percentage points an accuracy may rise before a check warns.
    max_large_epsilon_accuracy: accuracy % allowed at `large_epsilon`.
    max_zero_gradient_percent: % of examples allowed an all-zero input gradient.
    transfer_source: an optional model (same input and classes) to craft transfer
      examples on; the transfer check is skipped without one.
    transfer_name: its name, for the message.
    seed, strategy, batch_size, progress: as `attacks.attack_dataset`.

  Returns:
    A `MaskingReport`.
  """
  if epsilon <= 0:
    raise ValueError(f'The masking checks need eps > 0, got {epsilon}')
  if large_epsilon <= epsilon:
    raise ValueError(f'The large eps of the masking checks ({large_epsilon}) must exceed '
                     f'eps ({epsilon})')
  step_size = epsilon / 4 if step_size is None else step_size
  require_input_gradient(model, dataset)
  subset = _take(dataset, num_examples)

  def attack(model_to_attack, name, eps=epsilon, examples=subset, **kwargs):
    step = step_size * eps / epsilon  # the same step relative to the ball
    return attacks.attack_dataset(model_to_attack, examples, name, eps, step, seed=seed,
                                  strategy=strategy, progress=progress,
                                  batch_size=batch_size, **kwargs)

  clean = attack(model, 'clean')
  results = {'fgsm': attack(model, 'fgsm')}
  for steps in STEP_SWEEP:
    results[f'pgd{steps}'] = attack(model, f'pgd{steps}')
  results['apgd_ce'] = attack(model, 'apgd_ce')
  pgd = f'pgd{SWEEP_STEPS}'
  by_epsilon = {0.0: clean.accuracy, epsilon: results[pgd].accuracy}
  for factor in EPSILON_FACTORS:
    eps = factor * epsilon
    if eps not in by_epsilon:
      by_epsilon[eps] = attack(model, pgd, eps).accuracy
  if large_epsilon not in by_epsilon:
    by_epsilon[large_epsilon] = attack(model, pgd, large_epsilon).accuracy

  white_box = clean.correct.copy()
  for result in results.values():
    white_box &= result.correct
  accuracy = {name: result.accuracy for name, result in results.items()}
  num = len(clean.correct)
  measurements = {
      'examples': num, 'epsilon': epsilon, 'step_size': step_size, 'clean': clean.accuracy,
      **accuracy, 'white_box_worst_case': 100.0 * float(np.mean(white_box)),
      'accuracy_by_epsilon': [[eps, value] for eps, value in sorted(by_epsilon.items())],
      'zero_gradient_examples': int(clean.zero_gradient.sum())}
  findings = [
      check_steps({steps: accuracy[f'pgd{steps}'] for steps in STEP_SWEEP}, tolerance),
      check_single_step(accuracy['fgsm'], accuracy[pgd], SWEEP_STEPS, tolerance),
      check_epsilon(by_epsilon, tolerance),
      check_large_epsilon(large_epsilon, by_epsilon[large_epsilon],
                          max_large_epsilon_accuracy),
      check_apgd(accuracy['apgd_ce'], accuracy[pgd], SWEEP_STEPS, tolerance),
  ]
  if transfer_source is not None:
    crafted = attack(transfer_source, pgd, keep_adversarial=True)
    transferred = attack(model, 'clean', examples=tf.data.Dataset.from_tensor_slices(
        (crafted.adversarial, crafted.labels)))
    measurements['transfer'] = {'source': transfer_name, 'attack': pgd,
                                'source_accuracy': crafted.accuracy,
                                'accuracy': transferred.accuracy}
    findings.append(check_transfer(
        transferred.accuracy, measurements['white_box_worst_case'], transfer_name,
        int(np.sum(white_box & ~transferred.correct)), tolerance))
  findings.append(check_zero_gradients(measurements['zero_gradient_examples'], num,
                                       max_zero_gradient_percent))
  images = next(iter(subset.batch(num)))[0]
  findings.append(check_outputs(attacks.logits_of(model, tf.cast(images, tf.float32)).numpy()))
  return MaskingReport(tuple(findings), measurements)
