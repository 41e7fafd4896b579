"""``--nproc N`` for the training commands: start ``torchrun`` with N local processes, or run as one of them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from encoderguard.cli.common import configure_logging, positive_int
from encoderguard.errors import EncoderGuardError


def add_nproc(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--nproc", type=positive_int, default=1,
                        help=f"train {what} on N local processes with torch.distributed (gloo on CPU, NCCL on CUDA: "
                             "one GPU each) by starting torchrun; --batch-size stays the global batch (default 1; "
                             "under torchrun the process count is torchrun's)")


def run_distributed(args: argparse.Namespace, body: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """Run ``body`` as this command's work, on ``args.nproc`` processes.

    Outside ``torchrun`` with ``--nproc N > 1``: starts ``torchrun`` on this host with the same command line and
    returns ``None`` (rank 0 has printed the result). Under ``torchrun``: joins the process group inside ``body``
    and returns its result on rank 0, ``None`` on the other ranks (they print nothing and log warnings only).

    Raises:
        ValueError: ``--nproc`` disagrees with torchrun's process count.
        EncoderGuardError: a process of the launched run failed.
    """
    from encoderguard.train.distributed import from_env, launch, shutdown

    place = from_env()
    if not place.enabled and args.nproc > 1:
        code = launch(args.nproc, args.argv)
        if code != 0:
            raise EncoderGuardError(f"the run on {args.nproc} processes failed (torchrun exit code {code}); the "
                                    "failing process's error is above")
        return None
    if place.enabled and args.nproc not in (1, place.world_size):
        raise ValueError(f"--nproc {args.nproc} disagrees with torchrun's {place.world_size} processes; leave "
                         "--nproc out under torchrun")
    if not place.is_main:
        configure_logging(quiet=True)
    try:
        result = body()
    finally:
        shutdown()
    return result if place.is_main else None
