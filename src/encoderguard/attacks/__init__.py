"""Model-stealing attacks on embedding APIs: losses, query plans, the answer cache, the attack and its evaluation."""

from encoderguard.attacks.evaluate import (
    CopyEvaluation,
    VictimReference,
    evaluate_copy,
    gain_recovery,
    mean_cosine,
    victim_reference,
)
from encoderguard.attacks.losses import LOSSES, StealingLoss, create_loss
from encoderguard.attacks.queries import QueryPlan, query_order
from encoderguard.attacks.query_cache import CachedAnswers, QueryCache, QueryCacheError
from encoderguard.attacks.stealing import StealingAttack, StealResult, fill_cache, train_copy

__all__ = [
    "LOSSES", "CachedAnswers", "CopyEvaluation", "QueryCache", "QueryCacheError", "QueryPlan", "StealResult",
    "StealingAttack", "StealingLoss", "VictimReference", "create_loss", "evaluate_copy", "fill_cache",
    "gain_recovery", "mean_cosine", "query_order", "train_copy", "victim_reference",
]
