"""Model-stealing attacks on embedding APIs: losses, query plans, the answer cache, the attack and its evaluation."""

from encoderguard.attacks.copy_evaluation import (
    CopyEvaluation,
    VictimReference,
    evaluate_copy,
    gain_recovery,
    knn_agreement,
    mean_cosine,
    victim_reference,
)
from encoderguard.attacks.copy_training import train_copy
from encoderguard.attacks.losses import LOSSES, StealingLoss, create_loss
from encoderguard.attacks.queries import QueryPlan, query_order
from encoderguard.attacks.query_cache import CachedAnswers, QueryCache, QueryCacheError
from encoderguard.attacks.selection import SELECTIONS
from encoderguard.attacks.stealing import StealingAttack, StealResult, fill_cache
from encoderguard.attacks.thieves import THIEVES, create_thief

__all__ = [
    "LOSSES", "SELECTIONS", "THIEVES", "CachedAnswers", "CopyEvaluation", "QueryCache", "QueryCacheError",
    "QueryPlan", "StealResult",
    "StealingAttack", "StealingLoss", "VictimReference", "create_loss", "create_thief", "evaluate_copy",
    "fill_cache", "gain_recovery", "knn_agreement", "mean_cosine", "query_order", "train_copy", "victim_reference",
]
