"""Writes TF1 checkpoints laid out exactly like MadryLab's released ones (test helper).

The graphs are rebuilt with `tf.compat.v1` from the original code's structure and
variable names (see shared/reference/original_code_facts.md), filled with random
weights and non-trivial BN statistics, trained for one optimizer step so that the
optimizer slots exist, and saved with `tf.compat.v1.train.Saver` beside a
`checkpoint` index file holding relative paths, as in the release zips. Each
builder returns the TF1 graph's own inference logits: the reference that the
Keras models must reproduce.
"""

import os

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1

LEAKINESS = 0.1
BN_EPSILON = 0.001  # tf.contrib.layers.batch_norm's default, used by the original
STAGE_STRIDES = (1, 2, 2)
MNIST_INPUT = 'Placeholder:0'  # names in the released MNIST graph
MNIST_LABELS = 'Placeholder_1:0'
MNIST_LOGITS = 'add_3:0'


def relative_error(actual, expected):
  """max |actual - expected| / max |expected|, in float64."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def write_checkpoint_index(folder, prefix):
  """Writes `<folder>/checkpoint` naming `prefix` by a path relative to the folder."""
  name = os.path.basename(prefix)
  with open(os.path.join(folder, 'checkpoint'), 'w') as f:
    f.write(f'model_checkpoint_path: "{name}"\nall_model_checkpoint_paths: "{name}"\n')


def _session_config():
  config = v1.ConfigProto()
  # Grappler's graph rewrites cost more than these one-off runs gain from them.
  config.graph_options.rewrite_options.disable_meta_optimizer = True
  return config


def _save(sess, saver, folder, step, write_meta_graph=True):
  os.makedirs(folder, exist_ok=True)
  prefix = saver.save(sess, os.path.join(folder, 'checkpoint'), global_step=step,
                      write_meta_graph=write_meta_graph)
  # Saver writes absolute paths; the released zips hold relative ones.
  write_checkpoint_index(folder, prefix)
  return prefix


def _load(sess, values):
  """Sets {variable: value} in one run."""
  # Feeds each initializer's value input (what Variable.load does) instead of
  # adding constants to the saved graph.
  feed = {variable.initializer.inputs[1]: np.asarray(value).astype(
      variable.dtype.base_dtype.as_numpy_dtype) for variable, value in values.items()}
  sess.run([variable.initializer for variable in values], feed)


def write_tf1_checkpoint(folder, tensors, step):
  """Saves {name: array} with a TF1 Saver as `<folder>/checkpoint-<step>`; returns the prefix.

  For hand-made checkpoints with chosen names (e.g. a real one with a variable
  dropped or reshaped).
  """
  graph = tf.Graph()
  with graph.as_default():
    variables = {}
    for name, value in tensors.items():
      value = np.asarray(value)
      variables[v1.get_variable(name, value.shape, tf.as_dtype(value.dtype),
                                initializer=v1.zeros_initializer())] = value
    saver = v1.train.Saver()
    with v1.Session(graph=graph, config=_session_config()) as sess:
      _load(sess, variables)
      return _save(sess, saver, folder, step, write_meta_graph=False)


def read_tf1_checkpoint(prefix):
  """Returns {name: array} of every tensor in a checkpoint, slots included."""
  reader = tf.train.load_checkpoint(prefix)
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


# --- CIFAR-10 wide ResNet (MadryLab/cifar10_challenge model.py) ---


class _CifarBuilder:
  """Builds the original ResNet's ops; a training tower also collects BN batch moments."""

  def __init__(self, training):
    self.training = training
    self.moments = []  # (moving_mean, moving_variance, batch mean, batch variance)

  def conv(self, name, x, kernel_size, in_filters, out_filters, stride):
    with v1.variable_scope(name):
      fan_out = kernel_size * kernel_size * out_filters
      kernel = v1.get_variable(
          'DW', [kernel_size, kernel_size, in_filters, out_filters], tf.float32,
          initializer=v1.random_normal_initializer(stddev=np.sqrt(2.0 / fan_out)))
      return tf.nn.conv2d(x, kernel, [1, stride, stride, 1], 'SAME')

  def batch_norm(self, x):
    # contrib batch_norm(center, scale) puts its variables under '<scope>/BatchNorm'.
    channels = int(x.shape[-1])
    with v1.variable_scope('BatchNorm'):
      beta = v1.get_variable('beta', [channels],
                             initializer=v1.random_normal_initializer(stddev=0.1))
      gamma = v1.get_variable('gamma', [channels],
                              initializer=v1.random_uniform_initializer(0.5, 1.5))
      moving_mean = v1.get_variable('moving_mean', [channels], trainable=False,
                                    initializer=v1.random_normal_initializer(stddev=0.1))
      moving_variance = v1.get_variable('moving_variance', [channels], trainable=False,
                                        initializer=v1.random_uniform_initializer(0.5, 1.5))
    if self.training:
      mean, variance = tf.nn.moments(x, [0, 1, 2])
      self.moments.append((moving_mean, moving_variance, mean, variance))
    else:
      mean, variance = moving_mean, moving_variance
    return tf.nn.batch_normalization(x, mean, variance, beta, gamma, BN_EPSILON)

  def relu(self, x):
    return tf.where(x < 0.0, LEAKINESS * x, x)

  def residual(self, x, in_filter, out_filter, stride, activate_before_residual):
    if activate_before_residual:
      with v1.variable_scope('shared_activation'):
        x = self.relu(self.batch_norm(x))
        orig_x = x
    else:
      with v1.variable_scope('residual_only_activation'):
        orig_x = x
        x = self.relu(self.batch_norm(x))
    with v1.variable_scope('sub1'):
      x = self.conv('conv1', x, 3, in_filter, out_filter, stride)
    with v1.variable_scope('sub2'):
      x = self.relu(self.batch_norm(x))
      x = self.conv('conv2', x, 3, out_filter, out_filter, 1)
    with v1.variable_scope('sub_add'):
      if in_filter != out_filter:
        orig_x = tf.nn.avg_pool(orig_x, [1, stride, stride, 1], [1, stride, stride, 1], 'VALID')
        pad = (out_filter - in_filter) // 2
        orig_x = tf.pad(orig_x, [[0, 0], [0, 0], [0, 0], [pad, pad]])
      return x + orig_x

  def logits(self, x_input, filters, units_per_stage, head_scope, num_classes,
             keep_source_head):
    """x_input: [batch, 32, 32, 3] on the 0..255 scale."""
    with v1.variable_scope('input'):
      x = tf.image.per_image_standardization(x_input)
      x = self.conv('init_conv', x, 3, 3, filters[0], 1)
    activate = (True, False, False)
    for stage in range(3):
      with v1.variable_scope(f'unit_{stage + 1}_0'):
        x = self.residual(x, filters[stage], filters[stage + 1], STAGE_STRIDES[stage],
                          activate[stage])
      for i in range(1, units_per_stage):
        with v1.variable_scope(f'unit_{stage + 1}_{i}'):
          x = self.residual(x, filters[stage + 1], filters[stage + 1], 1, False)
    with v1.variable_scope('unit_last'):
      x = self.relu(self.batch_norm(x))
      x = tf.reduce_mean(x, [1, 2])
    if keep_source_head:
      # A finetuned teacher still holds the source model's 10-way head.
      self._dense('logit', x, filters[3], 10)
    return self._dense(head_scope, x, filters[3], num_classes)

  def _dense(self, scope, x, in_dim, out_dim):
    with v1.variable_scope(scope):
      kernel = v1.get_variable('DW', [in_dim, out_dim],
                               initializer=v1.random_normal_initializer(stddev=in_dim**-0.5))
      biases = v1.get_variable('biases', [out_dim],
                               initializer=v1.random_normal_initializer(stddev=0.1))
      return tf.compat.v1.nn.xw_plus_b(x, kernel, biases)


def build_madry_cifar_checkpoint(folder, filters=(16, 16, 32, 64), units_per_stage=2,
                                 num_classes=10, step=70000, head_scope='logit', seed=0,
                                 batch_size=4, keep_source_head=False):
  """Writes a Madry CIFAR-10 ResNet checkpoint; returns (prefix, images, logits).

  `images` is a float32 [batch_size, 32, 32, 3] batch in [0, 1]; `logits` the TF1
  graph's inference-mode (moving statistics) logits for `images * 255`, computed
  after saving. `head_scope='target_task_logit'` writes a finetuned K-way head
  (`keep_source_head=True` also keeps the 10-way `logit` head beside it).
  """
  rng = np.random.RandomState(seed)
  images = rng.uniform(0.0, 1.0, (batch_size, 32, 32, 3)).astype(np.float32)
  labels = rng.randint(0, num_classes, batch_size)
  graph = tf.Graph()
  with graph.as_default():
    v1.set_random_seed(seed)
    global_step = v1.train.get_or_create_global_step()
    x_input = v1.placeholder(tf.float32, [None, 32, 32, 3])
    y_input = v1.placeholder(tf.int64, [None])
    args = (filters, units_per_stage, head_scope, num_classes, keep_source_head)
    with v1.variable_scope(v1.get_variable_scope(), reuse=v1.AUTO_REUSE):
      trainer = _CifarBuilder(training=True)
      train_logits = trainer.logits(x_input, *args)
      inference_logits = _CifarBuilder(training=False).logits(x_input, *args)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=y_input, logits=train_logits))
    # The original's optimizer, so the checkpoint holds '<var>/Momentum' slots.
    train_op = v1.train.MomentumOptimizer(0.1, 0.9).minimize(loss, global_step=global_step)
    saver = v1.train.Saver()
    batch_moments = [(mean, variance) for _, _, mean, variance in trainer.moments]
    with v1.Session(graph=graph, config=_session_config()) as sess:
      sess.run(v1.global_variables_initializer())
      _load(sess, {global_step: step - 1})
      feed = {x_input: images * 255.0, y_input: labels}
      _, moments = sess.run([train_op, batch_moments], feed)
      # Moving statistics near, not at, the batch's: inference differs from
      # training mode, yet activations stay normalized so biases still matter.
      statistics = {}
      for (moving_mean, moving_variance, _, _), (mean, variance) in zip(trainer.moments,
                                                                          moments):
        statistics[moving_mean] = mean + 0.2 * np.sqrt(variance) * rng.standard_normal(
            mean.shape)
        statistics[moving_variance] = variance * rng.uniform(0.5, 1.5, variance.shape)
      _load(sess, statistics)
      prefix = _save(sess, saver, folder, step)
      logits = sess.run(inference_logits, {x_input: images * 255.0})
  return prefix, images, logits


# --- MNIST CNN (MadryLab/mnist_challenge model.py) ---


def _build_mnist_graph(finetuned_classes):
  """The original graph: unnamed tf.Variables, so TF names them Variable..Variable_7."""
  x_input = v1.placeholder(tf.float32, [None, 784])
  y_input = v1.placeholder(tf.int64, [None])
  x = tf.reshape(x_input, [-1, 28, 28, 1])

  def weight(shape):
    return tf.Variable(tf.random.truncated_normal(shape, stddev=0.1))

  def bias(shape):
    return tf.Variable(tf.constant(0.1, shape=shape))

  def conv_pool(x, kernel, biases):
    x = tf.nn.relu(tf.nn.conv2d(x, kernel, [1, 1, 1, 1], 'SAME') + biases)
    return tf.nn.max_pool2d(x, [1, 2, 2, 1], [1, 2, 2, 1], 'SAME')

  x = conv_pool(x, weight([5, 5, 1, 32]), bias([32]))
  x = conv_pool(x, weight([5, 5, 32, 64]), bias([64]))
  fc1_kernel, fc1_bias = weight([7 * 7 * 64, 1024]), bias([1024])
  x = tf.nn.relu(tf.matmul(tf.reshape(x, [-1, 7 * 7 * 64]), fc1_kernel) + fc1_bias)
  logits = tf.matmul(x, weight([1024, 10])) + bias([10])
  if finetuned_classes:
    # The IGAM authors' finetuning adds a K-way head beside the source one.
    with v1.variable_scope('target_task_logit'):
      kernel = v1.get_variable('DW', [1024, finetuned_classes],
                               initializer=v1.random_normal_initializer(stddev=1024**-0.5))
      biases = v1.get_variable('biases', [finetuned_classes],
                               initializer=v1.random_normal_initializer(stddev=0.1))
      logits = tf.compat.v1.nn.xw_plus_b(x, kernel, biases)
  loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=y_input, logits=logits))
  return x_input, y_input, logits, loss


def mnist_logits_of_checkpoint(prefix, images):
  """The logits the original TF1 MNIST graph computes on `images` [N, 28, 28, 1] with the
  weights of checkpoint `prefix`, restored by the original variable names."""
  graph = tf.Graph()
  with graph.as_default():
    x_input, _, logits, _ = _build_mnist_graph(None)
    saver = v1.train.Saver()
    with v1.Session(graph=graph, config=_session_config()) as sess:
      saver.restore(sess, prefix)
      return sess.run(logits, {x_input: images.reshape(len(images), 784)})


def build_madry_mnist_checkpoint(folder, step=99900, seed=0, batch_size=4, meta_graph=None,
                                 finetuned_classes=None):
  """Writes a Madry MNIST checkpoint; returns (prefix, images, logits).

  `meta_graph`: a .meta file (e.g. the genuine release graph) to import instead
  of rebuilding the graph. `finetuned_classes=K` (rebuilt graph only) adds a
  `target_task_logit/{DW,biases}` head whose logits are returned. `images` is a
  float32 [batch_size, 28, 28, 1] batch in [0, 1].
  """
  if meta_graph and finetuned_classes:
    raise ValueError('finetuned_classes needs the rebuilt graph, not a meta graph.')
  rng = np.random.RandomState(seed)
  images = rng.uniform(0.0, 1.0, (batch_size, 28, 28, 1)).astype(np.float32)
  labels = rng.randint(0, finetuned_classes or 10, batch_size)
  graph = tf.Graph()
  with graph.as_default():
    v1.set_random_seed(seed)
    if meta_graph:
      saver = v1.train.import_meta_graph(meta_graph)
      x_input = graph.get_tensor_by_name(MNIST_INPUT)
      y_input = graph.get_tensor_by_name(MNIST_LABELS)
      logits = graph.get_tensor_by_name(MNIST_LOGITS)
      (train_op,) = v1.get_collection(v1.GraphKeys.TRAIN_OP)
      (global_step,) = [v for v in v1.global_variables() if v.op.name == 'global_step']
    else:
      global_step = v1.train.get_or_create_global_step()  # created first, as in train.py
      x_input, y_input, logits, loss = _build_mnist_graph(finetuned_classes)
      train_op = v1.train.AdamOptimizer(1e-4).minimize(loss, global_step=global_step)
      saver = v1.train.Saver()
    with v1.Session(graph=graph, config=_session_config()) as sess:
      sess.run(v1.global_variables_initializer())
      # Random biases rather than the original's constant 0.1, so that a bias
      # loaded into the wrong place shows.
      biases = {variable: rng.uniform(0.0, 0.2, variable.shape)
                for variable in v1.trainable_variables() if len(variable.shape) == 1}
      _load(sess, {**biases, global_step: step - 1})
      flat_images = images.reshape(batch_size, 784)
      sess.run(train_op, {x_input: flat_images, y_input: labels})
      prefix = _save(sess, saver, folder, step)
      logits = sess.run(logits, {x_input: flat_images})
  return prefix, images, logits
