"""Keras models that load MadryLab's TF1 challenge checkpoints exactly.

This package never imports `igam_tf`.
"""

from madry_models.checkpoints import CheckpointError
from madry_models.checkpoints import load_madry_mnist
from madry_models.checkpoints import load_madry_resnet
from madry_models.checkpoints import load_tf1_checkpoint
from madry_models.checkpoints import resolve_checkpoint
from madry_models.checkpoints import save_tf1_checkpoint
from madry_models.dtypes import logits_dtype
from madry_models.mnist import MadryMNIST
from madry_models.resnet import INPUT_NORMALIZATIONS
from madry_models.resnet import MadryResNet
from madry_models.resnet import SMALL_FILTERS
from madry_models.resnet import WRN_32_10_FILTERS
