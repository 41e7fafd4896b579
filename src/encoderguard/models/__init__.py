"""Encoders, heads and safe checkpoints (safetensors + JSON card)."""

from encoderguard.models.card import ModelCard
from encoderguard.models.checkpoint import (
    Checkpoint,
    atomic_save_tensors,
    atomic_write_bytes,
    load_checkpoint,
    load_encoder,
    read_card,
    save_checkpoint,
)
from encoderguard.models.convnet import ConvNet
from encoderguard.models.encoder import Encoder
from encoderguard.models.heads import projection_head, watermark_head
from encoderguard.models.mlp import MLPEncoder
from encoderguard.models.registry import ENCODERS, create_encoder
from encoderguard.models.resnet import ResNet18

__all__ = [
    "ENCODERS", "Checkpoint", "ConvNet", "Encoder", "MLPEncoder", "ModelCard", "ResNet18", "atomic_save_tensors",
    "atomic_write_bytes", "create_encoder", "load_checkpoint", "load_encoder", "projection_head", "read_card",
    "save_checkpoint", "watermark_head",
]
