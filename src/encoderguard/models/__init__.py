"""Encoders, heads, safe checkpoints (safetensors + JSON card), probes and untrained twins (random init, null
encoders)."""

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
from encoderguard.models.checkpoint_probe import CheckpointProbe, probe_checkpoint, probe_sets
from encoderguard.models.convnet import ConvNet
from encoderguard.models.encoder import Encoder, TextEncoder
from encoderguard.models.encoder_contract import check_encoder
from encoderguard.models.heads import projection_head, watermark_head
from encoderguard.models.mlp import MLPEncoder
from encoderguard.models.model_spec import ONNX_PREFIX, ST_PREFIX, load_any
from encoderguard.models.probe import ProbeResult, encode, probe_features, probe_model
from encoderguard.models.random_init import NULL_ENCODER_SEED, null_encoders, random_init_like
from encoderguard.models.registry import ENCODERS, ENTRY_POINT_GROUP, create_encoder, encoder_class
from encoderguard.models.resnet import ResNet18
from encoderguard.models.state_dict_import import import_state_dict
from encoderguard.models.text_students import HashedNgramEncoder, HashedTransformerEncoder

__all__ = [
    "ENCODERS", "ENTRY_POINT_GROUP", "NULL_ENCODER_SEED", "ONNX_PREFIX", "ST_PREFIX", "Checkpoint", "CheckpointProbe",
    "ConvNet", "Encoder", "HashedNgramEncoder", "HashedTransformerEncoder", "MLPEncoder", "ModelCard", "ProbeResult",
    "ResNet18", "TextEncoder", "atomic_save_tensors", "atomic_write_bytes",
    "check_encoder", "create_encoder", "encode", "encoder_class", "import_state_dict", "load_any", "load_checkpoint",
    "load_encoder", "null_encoders", "probe_checkpoint", "probe_features", "probe_model", "probe_sets",
    "projection_head", "random_init_like", "read_card", "save_checkpoint", "watermark_head",
]
