"""The networks: encoders (EfficientNet-Lite0/1/2, ResNet-18/50) with their ImageNet start weights,
the projector and quality heads, and the safetensors encoder files (``weights.py``, a leaf that reads
and writes tensors; ``encoder.load_encoder`` builds an encoder from such a file). Depends on torch and
safetensors only."""

from __future__ import annotations

from shamisa.models.encoder import (
    ENCODER_NAMES,
    Encoder,
    build_encoder,
    encoder_from_weights,
    load_backbone_state,
    load_encoder,
)
from shamisa.models.heads import Projector, default_projector_dims
from shamisa.models.imagenet import imagenet_state_dict
from shamisa.models.paired import PairedEncoder, shared_stage_count, with_content
from shamisa.models.readout import READOUTS, MultiLevelEncoder, readout_of, with_readout
from shamisa.models.weights import (
    load_state_file,
    read_encoder_metadata,
    save_encoder,
    tensors_sha256,
)

__all__ = [
    "ENCODER_NAMES",
    "READOUTS",
    "MultiLevelEncoder",
    "Encoder",
    "PairedEncoder",
    "Projector",
    "build_encoder",
    "default_projector_dims",
    "encoder_from_weights",
    "imagenet_state_dict",
    "load_backbone_state",
    "load_encoder",
    "load_state_file",
    "read_encoder_metadata",
    "save_encoder",
    "shared_stage_count",
    "tensors_sha256",
    "readout_of",
    "with_content",
    "with_readout",
]
