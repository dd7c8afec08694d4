"""Attacks over a dataset, the numbers the tables report: `attack_dataset` (one attack),
`attack_results` and `robust_accuracy` (several, and the worst case per example).

Each attack is traced once per call, batches are spread over a `tf.distribute` strategy,
and the results are the same as on one device and for any batching. An AutoAttack
ensemble is handed to `autoattack.run_autoattack`, which attacks attack by attack.
"""

import dataclasses

from absl import logging
import numpy as np
import tensorflow as tf

from igam_tf.attacks import autoattack
from igam_tf.attacks import dispatch
from igam_tf.attacks import names
from igam_tf.attacks import ops
from igam_tf.attacks import passes


@dataclasses.dataclass(frozen=True)
class AttackResult:
  """One attack over a dataset, in example order.

  Attributes:
    name: the attack's name.
    correct: bool [N], whether the model still classifies each example correctly.
    labels: int64 [N].
    adversarial: float32 [N, H, W, C], or None unless asked for.
    zero_gradient: bool [N], examples whose cross-entropy input gradient is exactly zero
      at the clean input (only for 'clean', else None).
    report: the ensembles' own report (an `AutoAttackResult`: accuracy after each attack,
      their times, the sanity checks), else None.
  """
  name: str
  correct: np.ndarray
  labels: np.ndarray
  adversarial: np.ndarray | None = None
  zero_gradient: np.ndarray | None = None
  report: object = None

  @property
  def accuracy(self):
    """Accuracy in percent."""
    return 100.0 * float(np.mean(self.correct)) if self.correct.size else float('nan')


def _clean_zero_gradients(model, images, labels):
  """Examples whose cross-entropy input gradient is exactly zero: gradient attacks cannot
  move them (AutoAttack's check for gradient masking)."""
  _, gradient, _ = ops.loss_gradient(model, images, labels, 'ce')
  return tf.reduce_max(tf.abs(gradient), axis=list(range(1, gradient.shape.rank))) == 0


def _ensemble_on_dataset(spec, model, dataset, eps, restarts, num_examples, seed, strategy,
                         progress, batch_size, keep_adversarial):
  """`attack_dataset` of an ensemble: `run_autoattack`, whose report (accuracy after each
  attack, times, sanity checks) becomes the result's `report`."""
  result = autoattack.run_autoattack(
      model, dataset, eps, names.ENSEMBLE_VERSIONS[spec.method], num_examples=num_examples,
      seed=seed, strategy=strategy, progress=progress, batch_size=batch_size,
      restarts=restarts, keep_adversarial=keep_adversarial)
  return AttackResult(name=spec.name, correct=result.correct, labels=result.labels,
                      adversarial=result.adversarial, report=result)


def attack_dataset(model, dataset, attack, eps=ops.LINF_EPS, step_size=None, restarts=1,
                   num_examples=None, seed=0, strategy=None, progress=True, batch_size=100,
                   keep_adversarial=False):
  """Attacks every example of a dataset and scores the checked adversarial examples.

  Args:
    model: a Keras classifier or a callable images -> logits; under `strategy`, built in
      its scope.
    dataset: (image, label) pairs, batched or not, or a `data.DatasetSplit`; images float
      in [0, 1]. It is rebatched to `batch_size`, and examples are numbered in order for
      their random starts.
    attack: an attack name or `AttackSpec`.
    eps, step_size, restarts, seed: the attack's settings (step_size None: the default).
    num_examples: attack the first this many (None: all).
    strategy: a `tf.distribute.Strategy` that splits each batch across its replicas; the
      results are the same as on one device.
    progress: show a progress bar.
    batch_size: global batch size.
    keep_adversarial: also return the adversarial examples.

  Returns:
    An `AttackResult`.

  Raises:
    AttackError: an adversarial example outside the threat model.
  """
  spec = names.as_spec(attack)
  step_size = spec.default_step_size(eps) if step_size is None else step_size
  ops.check_settings(eps, step_size, spec.steps, restarts)
  if spec.method in names.ENSEMBLE_VERSIONS:
    return _ensemble_on_dataset(spec, model, dataset, eps, restarts, num_examples, seed,
                                strategy, progress, batch_size, keep_adversarial)
  strategy = strategy or tf.distribute.get_strategy()
  passes.check_replicas(strategy, batch_size)
  settings = (tf.cast(eps, tf.float32), tf.cast(step_size, tf.float32),
              tf.cast(restarts, tf.int32), tf.cast(seed, tf.int64))

  def attack_replica_batch(images, labels, example_ids):
    images, labels = tf.cast(images, tf.float32), tf.cast(labels, tf.int64)
    adversarial = dispatch.adversarial_core(spec, model, images, labels, *settings,
                                            example_ids, compiled=False)
    outputs = dict(images=images, adversarial=adversarial, labels=labels,
                   example_ids=example_ids,
                   correct=~ops.misclassified(ops.logits_of(model, adversarial), labels))
    if spec.method == 'clean':
      outputs['zero_gradient'] = _clean_zero_gradients(model, images, labels)
    return outputs

  results = passes.dataset_pass(
      attack_replica_batch, passes.numbered_batches(dataset, num_examples, batch_size),
      strategy, eps, spec.norm, progress, metric='accuracy',
      keep_adversarial=keep_adversarial)
  del results['example_ids']
  result = AttackResult(name=spec.name, **results)
  logging.info('%s: %.2f%% (%d of %d)', spec.name, result.accuracy,
               int(result.correct.sum()), len(result.correct))
  return result


def attack_results(model, dataset, attacks=names.DEFAULT_ATTACKS, eps=ops.LINF_EPS,
                   restarts=1, num_examples=None, seed=0, strategy=None, progress=True, *,
                   batch_size=100, step_size=None, l2_eps=None):
  """Runs each attack over the dataset (`attack_dataset`), 'clean' first.

  Args:
    model: a Keras classifier or a callable images -> logits (see `attack_dataset`).
    dataset: (image, label) pairs, batched or not, or a `data.DatasetSplit`.
    attacks: attack names (see `names`) or `AttackSpec`s; 'clean' is always run, as it
      belongs to every worst case.
    eps: the L-inf radius on the [0, 1] scale.
    restarts: random restarts of the PGD and APGD attacks (and of each attack of the
      AutoAttack ensembles).
    num_examples: evaluate the first this many (None: all).
    seed: fixes every random start.
    strategy: an optional `tf.distribute.Strategy`.
    progress: show progress bars.
    batch_size: global batch size.
    step_size: PGD step size (None: eps / 4, i.e. 2/255 at 8/255).
    l2_eps: the L2 radius, needed for L2 attacks.

  Returns:
    {attack name: `AttackResult`}, in the order run.
  """
  specs = [names.as_spec(a) for a in attacks]
  if not any(spec.method == 'clean' for spec in specs):
    specs.insert(0, names.parse_attack('clean'))
  if any(spec.norm == 'l2' and spec.method != 'clean' for spec in specs) and l2_eps is None:
    raise ValueError('L2 attacks need l2_eps.')
  results = {}
  for spec in specs:
    radius = l2_eps if spec.norm == 'l2' and spec.method != 'clean' else eps
    step = step_size if spec.norm == 'linf' else None
    result = attack_dataset(model, dataset, spec, radius, step, restarts, num_examples, seed,
                            strategy, progress, batch_size)
    if result.zero_gradient is not None and result.zero_gradient.any():
      logging.warning(
          '%d of %d examples have an all-zero input gradient at the clean input: '
          'gradient attacks cannot move them; treat their robustness as unverified.',
          int(result.zero_gradient.sum()), len(result.zero_gradient))
    results[spec.name] = result
  return results


def accuracies(results):
  """{attack name: accuracy %, 'worst_case': accuracy on the examples that neither the
  clean pass nor any L-inf attack broke} for `attack_results`' results; with L2
  attacks, 'worst_case_l2' likewise (and no 'worst_case' unless L-inf attacks ran too:
  the threat models differ)."""
  unbroken, attacked_norms = {}, set()
  for name, result in results.items():
    spec = names.parse_attack(name)
    if spec.method != 'clean':
      attacked_norms.add(spec.norm)
    for norm in (('linf', 'l2') if spec.method == 'clean' else (spec.norm,)):
      unbroken[norm] = unbroken.get(norm, result.correct) & result.correct
  accuracy = {name: result.accuracy for name, result in results.items()}
  if 'linf' in attacked_norms or not attacked_norms:
    accuracy['worst_case'] = 100.0 * float(np.mean(unbroken['linf']))
  if 'l2' in attacked_norms:
    accuracy['worst_case_l2'] = 100.0 * float(np.mean(unbroken['l2']))
  return accuracy


def robust_accuracy(model, dataset, attacks=names.DEFAULT_ATTACKS, eps=ops.LINF_EPS,
                    restarts=1, num_examples=None, seed=0, strategy=None, progress=True, *,
                    batch_size=100, step_size=None, l2_eps=None):
  """Accuracy in percent under each attack and in the worst case per example: the
  `accuracies` of `attack_results` (same arguments)."""
  return accuracies(attack_results(model, dataset, attacks, eps, restarts, num_examples,
                                   seed, strategy, progress, batch_size=batch_size,
                                   step_size=step_size, l2_eps=l2_eps))
