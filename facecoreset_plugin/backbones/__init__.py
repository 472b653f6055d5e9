"""Face backbones: IR nets (AdaFace and insightface layouts), any timm model, alignment, extraction.

Importing this package imports torch only; timm, PIL and the network modules load on use.
Build backbones with :func:`facecoreset_plugin.load_backbone` (``"ir_101"``, ``"timm:resnet50"``).
"""

from __future__ import annotations

__all__ = ["Backbone", "Preprocess", "load_weights"]

from .base import Backbone, Preprocess, load_weights
