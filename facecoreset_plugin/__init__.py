"""facecoreset: pluggable face-set aggregators and IJB-B/C protocols for PyTorch.

The public surface; importing this package imports no plugin, no timm and no matplotlib.
"""

__all__ = [
    "Aggregator",
    "EmptyConfig",
    "FaceSetBatch",
    "RaggedSets",
    "PluginInfo",
    "PluginRegistry",
    "available",
    "refresh",
    "registry",
    "load",
    "load_aggregator",
    "load_backbone",
    "load_protocol",
    "save_checkpoint",
    "read_checkpoint",
    "validate_set_batch",
    "FacecoresetError",
    "UnknownPluginError",
    "PluginLoadError",
    "InputError",
    "CheckpointError",
    "UnsafeFileError",
]

__version__ = "0.1.0"

from ._factory import load, load_aggregator, load_backbone, load_protocol
from ._registry import PluginInfo, PluginRegistry, available, refresh, registry
from .aggregator import Aggregator, EmptyConfig, validate_set_batch
from .batching import FaceSetBatch, RaggedSets
from .checkpoint import read_checkpoint, save_checkpoint
from .errors import (
    CheckpointError,
    FacecoresetError,
    InputError,
    PluginLoadError,
    UnknownPluginError,
    UnsafeFileError,
)
