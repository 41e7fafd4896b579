"""Sweep cells as independent jobs: in this process, on a local Ray instance (2 CPUs), and without Ray installed."""

from __future__ import annotations

import logging
import math
import sys

import pytest
import torch

from encoderguard.api import LocalAPI
from encoderguard.attacks import victim_reference
from encoderguard.data import SplitSpec, load_split
from encoderguard.models import create_encoder
from encoderguard.models.checkpoint_probe import probe_sets
from encoderguard.scenarios.job_runner import InProcessRunner, RayRunner, create_runner
from encoderguard.scenarios.sweep import run_sweep


def _square_plus(shared: int, job: int) -> int:
    return job * job + shared


def _sweep(tmp_path, runner):
    torch.manual_seed(0)
    victim = create_encoder("convnet", input_shape=(1, 8, 8), embed_dim=16, width=4, depth=2).eval()
    api = LocalAPI(victim)
    query = load_split(SplitSpec("digits", "query", 0, 200))
    train, test = probe_sets("digits")
    result = run_sweep(api, victim=victim_reference(victim, train, test), probe_train=train, probe_test=test,
                       query_data=query, losses=["mse", "infonce"], budgets=[60, 20], out_dir=tmp_path,
                       victim_train_size=200, progress=False, runner=runner,
                       attack_kwargs={"epochs": 2, "batch_size": 16, "arch_kwargs": {"width": 4, "depth": 2}})
    assert api.queries_used == 60 == result.queries_paid_total  # paid once, by the driver, whatever the runner
    return result


def _comparable(rows):
    # wall time differs from run to run; NaN (victim no better than random init here) compares equal to itself
    return [{k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.to_dict().items()
             if k != "train_seconds"} for row in rows]


def test_in_process_runner_keeps_job_order():
    assert InProcessRunner().map(_square_plus, [3, 1, 2], shared=10) == [19, 11, 14]


def test_sweep_on_local_ray_gives_the_in_process_rows(tmp_path):
    pytest.importorskip("ray")
    here = _sweep(tmp_path / "here", InProcessRunner())
    on_ray = _sweep(tmp_path / "ray", RayRunner("local", num_cpus=2))
    assert [(r.loss, r.budget) for r in on_ray.rows] == [("mse", 20), ("mse", 60), ("infonce", 20), ("infonce", 60)]
    assert _comparable(on_ray.rows) == _comparable(here.rows)
    assert (tmp_path / "ray" / "sweep.csv").read_text().count("\n") == 5


def test_without_ray_the_jobs_run_in_process_with_a_log_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with caplog.at_level(logging.WARNING, logger="encoderguard"):
        runner = create_runner("local")
    assert isinstance(runner, InProcessRunner)
    assert "Ray is not installed" in caplog.text and "pip install 'encoderguard[ray]'" in caplog.text
    assert runner.map(_square_plus, [2], shared=1) == [5]


def test_no_address_means_in_process():
    assert isinstance(create_runner(None), InProcessRunner)


@pytest.mark.parametrize(("address", "kwargs", "match"), [
    ("", {}, "address must be"),
    ("local", {"num_cpus": 0}, "num_cpus must be an integer >= 1, got 0"),
    ("auto", {"num_cpus": 2}, "num_cpus sizes a local Ray instance"),
    ("local", {"cpus_per_job": 0}, "cpus_per_job must be a number > 0, got 0"),
])
def test_bad_ray_settings_are_refused(address, kwargs, match):
    with pytest.raises(ValueError, match=match):
        RayRunner(address, **kwargs)


def test_sweep_command_refuses_ray_cpus_without_a_local_instance(tmp_path, capsys):
    from encoderguard.cli.main import main

    code = main(["sweep", "--victim", str(tmp_path / "none"), "--ray", "auto", "--ray-cpus", "2",
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "--ray-cpus sizes the instance of --ray local" in capsys.readouterr().err
