"""One pass of a per-batch attack over a dataset, for `attack_dataset` and for each attack
of `run_autoattack`: examples numbered in order (their ids fix every random draw), full
padded batches spread over a `tf.distribute` strategy, and every adversarial example
checked against the threat model before it is scored. Apart so that both runners share
it without importing each other.
"""

import keras
import numpy as np
import tensorflow as tf

from igam_tf.attacks import ops


def examples(dataset, num_examples):
  """The first `num_examples` (all if None) unbatched (image, label) pairs of a dataset,
  batched or not, or of a `data.DatasetSplit`."""
  dataset = getattr(dataset, 'dataset', dataset)  # a data.DatasetSplit
  if dataset.element_spec[0].shape.rank == 4:
    dataset = dataset.unbatch()
  return dataset if num_examples is None else dataset.take(num_examples)


def load_examples(dataset, num_examples=None, chunk=1000):
  """(images, labels): the first `num_examples` (all if None) examples of `dataset` as
  numpy arrays, read in a single pass. Example i is the one every attack of
  `run_autoattack` calls example i: a dataset that reshuffles on each pass (or reads
  differently) cannot hand a later attack other examples than the clean pass scored."""
  images, labels = [], []
  for image_batch, label_batch in examples(dataset, num_examples).batch(chunk):
    images.append(image_batch.numpy())
    labels.append(label_batch.numpy())
  if not images:
    raise ValueError('The dataset has no examples.')
  return np.concatenate(images), np.concatenate(labels)


def numbered_batches(dataset, num_examples, batch_size):
  """Full batches of (images, labels, example ids) from (image, label) pairs, batched or
  not; the last batch is padded with copies of the first example, with id -1.

  Equal batches trace once, and no replica is ever handed an empty batch (oneDNN's
  Conv2D returns an empty input unchanged, which breaks the next layer).
  """
  numbered = examples(dataset, num_examples).enumerate().map(
      lambda index, example: (example[0], example[1], index))
  padding = numbered.take(1).map(
      lambda image, label, index: (image, label, tf.constant(-1, tf.int64)))
  return numbered.concatenate(padding.repeat(batch_size - 1)).batch(
      batch_size, drop_remainder=True)


def numbered_subset(images, labels, keep, batch_size):
  """Full batches of (image, label, id) of the examples where `keep` (all if None), ids
  being positions in `images`; padded with copies of the first, with id -1, as
  `numbered_batches` (no replica is ever handed an empty batch)."""
  ids = np.arange(len(labels)) if keep is None else np.flatnonzero(keep)
  padding = -len(ids) % batch_size
  ids = np.concatenate([ids, np.full(padding, ids[0])]).astype(np.int64)
  numbered = np.where(np.arange(len(ids)) < len(ids) - padding, ids, -1)
  return tf.data.Dataset.from_tensor_slices(
      (images[ids], labels[ids], numbered)).batch(batch_size, drop_remainder=True)


def check_replicas(strategy, batch_size):
  """Raises ValueError if a batch cannot give every replica of `strategy` an example."""
  if batch_size < strategy.num_replicas_in_sync:
    raise ValueError(f'batch_size {batch_size} is smaller than the number of replicas '
                     f'({strategy.num_replicas_in_sync}).')


def dataset_pass(replica_fn, batches, strategy, eps, norm='linf', progress=True,
                 metric='robust', keep_adversarial=True):
  """Runs replica_fn(images, labels, ids) -> dict on every batch of `batches` over
  `strategy`, with a progress bar of the running accuracy (`metric`) over the 'correct'
  outputs. An 'adversarial' output is checked against the 'images' output before it is
  scored, and dropped unless `keep_adversarial`.

  Returns:
    {output: numpy array} of the real examples (id >= 0) in id order, 'example_ids'
    included.

  Raises:
    AttackError: an adversarial example outside the threat model.
  """

  flags = set()  # the boolean outputs: collectives gather numbers, so they go as int32

  def numeric_replica_fn(*batch):
    outputs = replica_fn(*batch)
    flags.update(key for key, value in outputs.items() if value.dtype == tf.bool)
    return {key: tf.cast(value, tf.int32) if key in flags else value
            for key, value in outputs.items()}

  @tf.function
  def run_batch(batch):
    outputs = strategy.run(numeric_replica_fn, args=batch)
    # Every replica's outputs, on every worker of a multi-worker run too.
    return {key: strategy.gather(value, axis=0) for key, value in outputs.items()}

  num_batches = int(batches.cardinality())
  bar = keras.utils.Progbar(num_batches if num_batches >= 0 else None, unit_name='batch',
                            verbose=1 if progress else 0, stateful_metrics=[metric])
  collected = {}
  num_correct = num_seen = done = 0
  # Each worker of a multi-worker strategy takes its share of every batch (by examples:
  # in-memory arrays have no files to split by).
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  for batch in strategy.experimental_distribute_dataset(batches.with_options(options)):
    done += 1
    outputs = {key: value.numpy().astype(bool) if key in flags else value.numpy()
               for key, value in run_batch(batch).items()}
    images = outputs.pop('images', None)
    if 'adversarial' in outputs:
      # Check before scoring: a broken attack must fail, not report a good number.
      ops.check_adversarial(images, outputs['adversarial'], eps, norm)
      if not keep_adversarial:
        del outputs['adversarial']
    for key, value in outputs.items():
      collected.setdefault(key, []).append(value)
    real = outputs['example_ids'] >= 0
    num_correct += int(outputs['correct'][real].sum())
    num_seen += int(real.sum())
    bar.update(done, values=[(metric, 100.0 * num_correct / max(num_seen, 1))])
  if bar.target is None:
    bar.update(done, finalize=True)
  if not collected:
    raise ValueError('The dataset has no examples.')
  results = {key: np.concatenate(value) for key, value in collected.items()}
  ids = results['example_ids']
  order = np.flatnonzero(ids >= 0)  # drop the padding
  order = order[np.argsort(ids[order], kind='stable')]
  return {key: value[order] for key, value in results.items()}
