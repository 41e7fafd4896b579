"""SSL training (SimCLR, watermark co-training) and reference-encoder recipes.

The probes (``encode``, ``probe_features``, ``probe_model``, ``ProbeResult``) live in :mod:`encoderguard.models`;
they are re-exported here because training reports them.
"""

from encoderguard.models.probe import ProbeResult, encode, probe_features, probe_model
from encoderguard.train.autoencoder import train_autoencoder
from encoderguard.train.ntxent_loss import NTXentLoss
from encoderguard.train.simclr import SimCLRConfig, TrainResult, train_simclr
from encoderguard.train.supervised import train_supervised
from encoderguard.train.watermark_task import rotation_batch

__all__ = ["NTXentLoss", "ProbeResult", "SimCLRConfig", "TrainResult", "encode", "probe_features", "probe_model",
           "rotation_batch", "train_autoencoder", "train_simclr", "train_supervised"]
