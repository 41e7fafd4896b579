"""Where independent jobs run: one after another in this process, or spread over a Ray cluster.

A scenario that splits into independent jobs (the cells of a stealing sweep) hands them to a :class:`JobRunner`:
``runner.map(fn, jobs, shared=context)`` returns ``[fn(context, job) for job in jobs]`` in job order, wherever the
calls ran. ``fn`` must be a module-level function of the installed package (Ray's workers import it by name), and
``context`` is sent once per run, not once per job.

Ray is an optional extra (``pip install 'encoderguard[ray]'``). Without it, :func:`create_runner` says so in one log
line and runs the jobs in this process, so that a command line written for a cluster still runs on a laptop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from encoderguard.optional import require

logger = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")


class JobRunner(Protocol):
    """Runs ``fn(shared, job)`` for every job and returns the results in job order."""

    name: str

    def map(self, fn: Callable[[Any, J], R], jobs: Sequence[J], *, shared: Any) -> list[R]: ...


class InProcessRunner:
    """Runs the jobs one after another in this process."""

    name = "in-process"

    def map(self, fn: Callable[[Any, J], R], jobs: Sequence[J], *, shared: Any) -> list[R]:
        return [fn(shared, job) for job in jobs]


class RayRunner:
    """Runs each job as a Ray task (one CPU each by default) on a Ray cluster.

    Args:
        address: ``"local"`` starts a Ray instance on this machine for the run and stops it after; anything else is
            passed to ``ray.init(address=...)``: ``"auto"`` (the cluster this machine belongs to),
            ``"HOST:6379"``, or ``"ray://HOST:10001"`` (Ray client). Every node needs encoderguard installed, and
            the datasets only where the driver loads them: the jobs receive their data from the driver.
        num_cpus: CPUs of a ``"local"`` instance (default: all of this machine's).
        cpus_per_job: CPUs Ray reserves for each job (default 1; torch in the job uses as many threads).

    Raises:
        ValueError: a bad setting.
        MissingDependencyError: Ray is not installed (see :func:`create_runner` for the fallback).
    """

    name = "ray"

    def __init__(self, address: str = "local", *, num_cpus: int | None = None, cpus_per_job: float = 1.0) -> None:
        if not isinstance(address, str) or not address.strip():
            raise ValueError(f"address must be 'local' or a Ray address, got {address!r}")
        if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
            raise ValueError(f"num_cpus must be an integer >= 1, got {num_cpus!r}")
        if num_cpus is not None and address != "local":
            raise ValueError(f"num_cpus sizes a local Ray instance; the cluster at {address!r} has its own")
        if not (isinstance(cpus_per_job, (int, float)) and cpus_per_job > 0):
            raise ValueError(f"cpus_per_job must be a number > 0, got {cpus_per_job!r}")
        self.address, self.num_cpus, self.cpus_per_job = address.strip(), num_cpus, float(cpus_per_job)
        self.ray = require("ray", extra="ray", purpose="--ray")

    def map(self, fn: Callable[[Any, J], R], jobs: Sequence[J], *, shared: Any) -> list[R]:
        ray = self.ray
        started = not ray.is_initialized()
        if started:
            if self.address == "local":
                ray.init(address="local", num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=True)
            else:
                ray.init(address=self.address, log_to_driver=True)
        try:
            resources = ray.cluster_resources()
            logger.info("running %d jobs on Ray (%s, %g CPUs)", len(jobs), self.address, resources.get("CPU", 0))
            remote = ray.remote(num_cpus=self.cpus_per_job)(fn)
            context = ray.put(shared)
            return list(ray.get([remote.remote(context, job) for job in jobs]))
        finally:
            if started:
                ray.shutdown()


def create_runner(ray: str | None = None, *, num_cpus: int | None = None) -> JobRunner:
    """The runner for ``--ray ADDRESS``: :class:`RayRunner`, or :class:`InProcessRunner` without an address.

    When Ray is not installed, logs a warning with the install command and returns :class:`InProcessRunner`.

    Raises:
        ValueError: a bad address or ``num_cpus``.
    """
    if ray is None:
        return InProcessRunner()
    try:
        return RayRunner(ray, num_cpus=num_cpus)
    except ImportError as exc:  # MissingDependencyError is an ImportError
        logger.warning("Ray is not installed (%s): running the jobs one after another in this process", exc)
        return InProcessRunner()
