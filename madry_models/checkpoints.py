"""Reads MadryLab's TF1 checkpoints, by variable name, into the Keras models, and
writes a model as one (`save_tf1_checkpoint`).

A checkpoint path is either a folder (the newest checkpoint named by its
`checkpoint` index file, whose paths may be relative as in the released zips, or
absolute) or a prefix such as `models/adv_trained/checkpoint-99900`. Optimizer
slots and `global_step` are ignored. Every check runs before any weight is
assigned, so a failed load leaves the model as it was.
"""

import inspect
import os
import re

import numpy as np
import tensorflow as tf

from madry_models.mnist import MadryMNIST
from madry_models.resnet import MadryResNet

FINETUNED_HEAD = 'target_task_logit'  # the IGAM authors' finetuned K-way head
_MNIST_MARKER = 'Variable_4'  # the MNIST CNN's fc1 kernel, [3136, 1024]
_RESNET_MARKER = 'input/init_conv/DW'


class CheckpointError(ValueError):
  """A checkpoint is missing, or does not fit the model it is loaded into."""


def resolve_checkpoint(path):
  """Returns the checkpoint prefix that `path` (a folder or a prefix) names."""
  path = os.fspath(path)
  if os.path.isdir(path):
    return _newest_in_folder(path)
  if os.path.exists(path + '.index'):
    return path
  if not os.path.exists(os.path.dirname(path) or '.'):
    raise CheckpointError(f'No such checkpoint path: {path!r} (its folder does not exist).')
  raise CheckpointError(
      f'No checkpoint at {path!r}: expected a folder holding a TF checkpoint or a prefix '
      f'with a {os.path.basename(path)}.index file beside it.')


def _newest_in_folder(folder):
  state = tf.train.get_checkpoint_state(folder)
  if state and state.model_checkpoint_path:
    prefix = state.model_checkpoint_path  # made absolute by TF when it was relative
    if os.path.exists(prefix + '.index'):
      return prefix
    # An absolute path from the machine that wrote the checkpoint: look beside the index.
    local = os.path.join(folder, os.path.basename(prefix))
    if os.path.exists(local + '.index'):
      return local
    raise CheckpointError(
        f'{os.path.join(folder, "checkpoint")} names {prefix!r}, but neither it nor '
        f'{local!r} has an .index file.')
  # No index file: take the highest-numbered checkpoint-<step>.index, if any.
  steps = [(int(m.group(1)), m.group(0)[:-len('.index')])
           for m in (re.fullmatch(r'.*-(\d+)\.index', f) for f in os.listdir(folder)) if m]
  if not steps:
    raise CheckpointError(
        f'No checkpoint in folder {folder!r}: it has no `checkpoint` index file and no '
        f'<name>-<step>.index files.')
  return os.path.join(folder, max(steps)[1])


def _is_slot_or_bookkeeping(name):
  last = name.split('/')[-1]
  return (name in ('global_step', 'beta1_power', 'beta2_power')
          or re.fullmatch(r'(Adam|Adam_\d+|Momentum|Momentum_\d+)', last) is not None)


def read_variables(path):
  """Returns (prefix, {name: shape}) of the model variables in a checkpoint."""
  prefix = resolve_checkpoint(path)
  try:
    variables = tf.train.list_variables(prefix)
  except tf.errors.OpError as error:  # e.g. a truncated or corrupt .index file
    raise CheckpointError(f'Cannot read the checkpoint index {prefix}.index: '
                          f'{error.message}') from error
  shapes = {name: tuple(shape) for name, shape in variables
            if not _is_slot_or_bookkeeping(name)}
  return prefix, shapes


def describe(shapes):
  """Names the kind of model a checkpoint's variables look like."""
  if _RESNET_MARKER in shapes:
    return 'a Madry CIFAR-10 wide ResNet checkpoint'
  if _MNIST_MARKER in shapes:
    return 'a Madry MNIST CNN checkpoint'
  return 'neither a Madry MNIST nor a Madry CIFAR-10 checkpoint'


def head_scope(shapes, default):
  """The scope of the logit layer: the finetuned head if the checkpoint has one."""
  return FINETUNED_HEAD if f'{FINETUNED_HEAD}/DW' in shapes else default


def load_tf1_checkpoint(model, path):
  """Assigns a TF1 checkpoint's variables to `model` (MadryMNIST or MadryResNet).

  Returns the checkpoint prefix that was read. Raises CheckpointError, changing
  nothing, for a missing checkpoint, a missing variable or a shape mismatch.
  """
  prefix, shapes = read_variables(path)
  if isinstance(model, MadryMNIST):
    expected_kind, marker = 'a Madry MNIST CNN checkpoint', _MNIST_MARKER
    names = model.tf1_variables(head_scope(shapes, None))
  elif isinstance(model, MadryResNet):
    expected_kind, marker = 'a Madry CIFAR-10 wide ResNet checkpoint', _RESNET_MARKER
    names = model.tf1_variables(head_scope(shapes, 'logit'))
  else:
    raise TypeError(f'Cannot load a Madry checkpoint into {type(model).__name__}.')
  if marker not in shapes:
    raise CheckpointError(
        f'{prefix} is {describe(shapes)}, but {model.name} needs {expected_kind}.')
  missing = sorted(set(names) - set(shapes))
  if missing:
    raise CheckpointError(
        f'{prefix} lacks {len(missing)} variable(s) that {model.name} needs: '
        f'{", ".join(missing)}')
  for name, variable in names.items():
    if tuple(variable.shape) != shapes[name]:
      raise CheckpointError(
          f'Shape mismatch for {name!r} in {prefix}: {model.name} expects '
          f'{list(variable.shape)}, the checkpoint has {list(shapes[name])}.')
  try:
    reader = tf.train.load_checkpoint(prefix)
    values = {name: reader.get_tensor(name) for name in names}
  except tf.errors.OpError as error:  # e.g. an index whose .data-* file is missing
    raise CheckpointError(f'Cannot read the weights of {prefix} (is its .data-* file '
                          f'missing or incomplete?): {error.message}') from error
  except IndexError as error:  # TF's reader on a truncated .data-* file
    data_files = sorted(f for f in os.listdir(os.path.dirname(prefix) or '.')
                        if f.startswith(os.path.basename(prefix) + '.data-'))
    named = os.path.join(os.path.dirname(prefix), data_files[0]) if data_files else prefix
    raise CheckpointError(f'Cannot read the weights of {prefix}: {named} is truncated or '
                          f'incomplete ({error})') from error
  for name, variable in names.items():
    variable.assign(values[name].astype(np.float32))
  return prefix


def save_tf1_checkpoint(model, folder, global_step=0):
  """Writes `model` (MadryMNIST or MadryResNet) as MadryLab's code saves one: the TF1
  checkpoint `folder/checkpoint-<global_step>` under the original variable names, with
  `global_step`, and the folder's `checkpoint` index naming it. `load_tf1_checkpoint`,
  the original TF1 code and the IGAM authors' code read it. Returns the prefix."""
  if not isinstance(model, (MadryMNIST, MadryResNet)):
    raise TypeError(f'{type(model).__name__} has no MadryLab TF1 layout.')
  # The TF1 graphs compute with these; other choices would load as another function.
  defaults = inspect.signature(type(model).__init__).parameters
  originals = {name: defaults[name].default for name in ('activation', 'input_normalization')
               if name in defaults}
  changed = [f'{name}={getattr(model, name)!r} (the original: {value!r})'
             for name, value in originals.items() if getattr(model, name) != value]
  if changed:
    raise ValueError(f'{model.name} computes with {", ".join(changed)}: MadryLab\'s TF1 '
                     f'code would read its weights as another model.')
  values = {name: np.asarray(variable.numpy(), np.float32)
            for name, variable in model.tf1_variables().items()}
  os.makedirs(folder, exist_ok=True)
  graph = tf.Graph()
  with graph.as_default():
    variables = [tf.compat.v1.Variable(value, name=name) for name, value in values.items()]
    step = tf.compat.v1.Variable(global_step, name='global_step', dtype=tf.int64,
                                 trainable=False)
    assert [v.op.name for v in variables] == list(values), 'TF1 renamed a variable'
    saver = tf.compat.v1.train.Saver(variables + [step], save_relative_paths=True)
    with tf.compat.v1.Session(graph=graph) as session:
      session.run(tf.compat.v1.global_variables_initializer())
      return saver.save(session, os.path.join(folder, 'checkpoint'), global_step=global_step,
                        write_meta_graph=False)


def resnet_config(shapes):
  """Infers MadryResNet's filters, units per stage and classes from its variables."""
  def out_channels(name):
    return shapes[name][-1]
  filters = (out_channels(_RESNET_MARKER),) + tuple(
      out_channels(f'unit_{s}_0/sub1/conv1/DW') for s in (1, 2, 3)
      if f'unit_{s}_0/sub1/conv1/DW' in shapes)
  units = len({n.split('/')[0] for n in shapes if n.startswith('unit_1_')})
  head = head_scope(shapes, 'logit')
  num_classes = shapes[f'{head}/DW'][-1] if f'{head}/DW' in shapes else 10
  return {'filters': filters, 'units_per_stage': units, 'num_classes': num_classes}


def load_madry_mnist(path, num_classes=None):
  """Builds MadryMNIST and loads a TF1 checkpoint (Madry's or a finetuned one).

  `num_classes=None` takes the number of classes from the checkpoint's head.
  """
  prefix, shapes = read_variables(path)
  if num_classes is None:
    head = 'Variable_7' if head_scope(shapes, None) is None else f'{FINETUNED_HEAD}/biases'
    num_classes = shapes[head][0] if head in shapes else 10
  model = MadryMNIST(num_classes=num_classes)
  model(tf.zeros((1,) + MadryMNIST.input_image_shape))
  load_tf1_checkpoint(model, prefix)
  return model


def load_madry_resnet(path, filters=None, units_per_stage=None, num_classes=None):
  """Builds MadryResNet and loads a TF1 checkpoint.

  Arguments left as None are read off the checkpoint's variable shapes; given
  ones are checked against it.
  """
  prefix, shapes = read_variables(path)
  if _RESNET_MARKER not in shapes:
    raise CheckpointError(
        f'{prefix} is {describe(shapes)}, but the CIFAR-10 wide ResNet needs '
        f'a Madry CIFAR-10 wide ResNet checkpoint.')
  config = resnet_config(shapes)
  model = MadryResNet(
      filters=filters or config['filters'],
      units_per_stage=units_per_stage or config['units_per_stage'],
      num_classes=num_classes or config['num_classes'])
  model(tf.zeros((1,) + MadryResNet.input_image_shape))
  load_tf1_checkpoint(model, prefix)
  return model
