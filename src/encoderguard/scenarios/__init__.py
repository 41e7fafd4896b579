"""End-to-end scenarios that compose the layers below: the demo, stealing sweeps, the defence evaluation (honest
utility against what thieves keep) and the owner-side calibration of the ``coverage`` and ``spread`` defences."""

from encoderguard.scenarios.coverage_calibration import calibrate_coverage
from encoderguard.scenarios.defence_evaluation import DefenceEvaluation
from encoderguard.scenarios.defence_results import AttackOutcome, DefenceEvaluationResult, DefenceRow, HonestPattern
from encoderguard.scenarios.demo import DemoSettings, run_demo
from encoderguard.scenarios.spread_calibration import calibrate_spread, simulate_traffic
from encoderguard.scenarios.sweep import SweepResult, SweepRow, run_sweep

__all__ = [
    "AttackOutcome", "DefenceEvaluation", "DefenceEvaluationResult", "DefenceRow", "DemoSettings", "HonestPattern",
    "SweepResult", "SweepRow", "calibrate_coverage", "calibrate_spread", "run_demo", "run_sweep", "simulate_traffic",
]
