"""Training on several processes with ``torch.distributed``: process-group set-up, data sharding, seeding, DDP.

A distributed run is started by ``torchrun`` (or ``encoderguard train --nproc N``, which starts ``torchrun``
itself). Each process reads its rank from the environment that ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) and joins one process group: gloo on CPU, NCCL on CUDA GPUs (one GPU per process,
``cuda:LOCAL_RANK``).

The rules that keep a run reproducible for a given number of processes ``N``:

- **One global batch, split by rank.** Every process draws the same permutation from the same ``(seed, epoch)``
  generator, so all of them agree on each global batch; process ``r`` trains on the ``r``-th of ``N`` contiguous
  slices of it (:meth:`Distributed.shard`). ``batch_size`` stays the global batch, so a run on ``N`` processes
  takes the same optimiser steps on the same images as a run on one.
- **Per-rank random views.** The augmentations and any other random draws of process ``r`` come from
  ``rank_seed(seed, r)``; rank 0 uses exactly the seed of a one-process run.
- **Gradients are averaged by** :class:`torch.nn.parallel.DistributedDataParallel`; losses that compare
  examples across the batch (NT-Xent, InfoNCE) see the whole global batch through :func:`gather_with_grad`.

What still differs from one process at the same global batch: BatchNorm normalises each process's slice with that
slice's statistics (plain DDP; ``SyncBatchNorm`` needs a GPU), and the views are drawn from other random streams.
Both are noise of the size of a change of seed.

Only rank 0 writes files (checkpoint, card, resume state) and shows a progress bar.
"""

from __future__ import annotations

import datetime
import gc
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# Rank r > 0 draws its views from seed + r * RANK_SEED_STRIDE (rank 0 keeps the one-process seed).
RANK_SEED_STRIDE = 1_000_003
# Paying for the queries of a stolen copy happens on rank 0 while the other ranks wait at a barrier; over a slow API
# that takes far longer than torch's default 30 minutes.
TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a distributed run (``world_size == 1``: a plain one-process run).

    Attributes:
        rank: global rank, 0 to ``world_size - 1``.
        world_size: number of processes.
        local_rank: rank on this host (picks the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        if self.local_rank < 0:
            raise ValueError(f"local_rank must be >= 0, got {self.local_rank}")

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files, shows progress and reports."""
        return self.rank == 0

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch ``index`` ``[B]`` (sizes differ by at most one).

        Concatenating the slices of ranks ``0..N-1`` gives ``index`` back, so gathered features are in the order
        of the global batch.
        """
        if not self.enabled:
            return index
        return torch.tensor_split(index, self.world_size)[self.rank]

    def rank_seed(self, seed: int) -> int:
        """The seed of this rank's random draws: ``seed`` on rank 0, ``seed + rank * RANK_SEED_STRIDE`` after."""
        return seed + self.rank * RANK_SEED_STRIDE

    def device(self, device: str) -> str:
        """The torch device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a distributed run."""
        if self.enabled and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device

    def wrap(self, module: nn.Module, device: str) -> nn.Module:
        """``module`` wrapped in DDP (gradients averaged over the ranks), or itself in a one-process run."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(device).index] if device.startswith("cuda") else None
        return DistributedDataParallel(module, device_ids=ids)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' ``x`` ``[B_r, ...]`` concatenated in rank order ``[sum B_r, ...]``, gradients flowing back."""
        return gather_with_grad(x) if self.enabled else x

    def mean(self, values: Sequence[float]) -> list[float]:
        """The mean of ``values`` over the ranks (for logging; every rank gets the same numbers)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def sum(self, values: Sequence[int]) -> list[int]:
        """The sum of integer ``values`` over the ranks."""
        if not self.enabled:
            return [int(v) for v in values]
        t = torch.tensor([int(v) for v in values], dtype=torch.int64)
        dist.all_reduce(t)
        return [int(v) for v in t.tolist()]

    def wait_turn(self) -> None:
        """Start of a block that the ranks run one after another, rank 0 first (ends with :meth:`end_turn`)."""
        for _ in range(self.rank if self.enabled else 0):
            dist.barrier()

    def end_turn(self) -> None:
        """End of a block started by :meth:`wait_turn`: lets the next rank in."""
        for _ in range(self.world_size - self.rank if self.enabled else 0):
            dist.barrier()


class ClosureStep(nn.Module):
    """A model and a function of it as one module, so that DDP sees one forward per backward.

    ``ClosureStep(model, fn)(*args)`` is ``fn(model, *args)``; ``fn`` may call ``model`` several times (augmented
    views, mixup). Only ``model``'s parameters are the module's: a loss with its own parameters stays outside.
    """

    def __init__(self, model: nn.Module, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *args: Any) -> torch.Tensor:
        return self.fn(self.model, *args)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def from_env() -> Distributed:
    """The place of this process as ``torchrun`` describes it in ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``.

    Without those variables: one process (rank 0 of 1).

    Raises:
        ValueError: a variable that is not an integer, or a rank outside the world size.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    return Distributed(rank=rank, world_size=world, local_rank=_env_int("LOCAL_RANK", rank))


def current() -> Distributed:
    """The place of this process in the initialised default process group, or one process if there is none."""
    if dist.is_available() and dist.is_initialized():
        return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(),
                           local_rank=_env_int("LOCAL_RANK", dist.get_rank()))
    return Distributed()


def init_from_env(device: str = "cpu") -> Distributed:
    """Join the process group that ``torchrun``'s environment describes (gloo on CPU, NCCL on CUDA).

    Idempotent, and a no-op outside a distributed launch. Returns this process's :class:`Distributed`.

    Raises:
        ValueError: bad ``RANK``/``WORLD_SIZE``, or a CUDA run with fewer GPUs than processes on this host.
        RuntimeError: torch was built without ``torch.distributed``.
    """
    place = from_env()
    if not place.enabled or dist.is_initialized():
        return current() if place.enabled else place
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run on one process (--nproc 1)")
    backend = "gloo"
    if device.startswith("cuda"):
        count = torch.cuda.device_count()
        if place.local_rank >= count:
            raise ValueError(f"process {place.local_rank} on this host needs cuda:{place.local_rank}, but torch "
                             f"sees {count} GPU(s); start at most {count} processes per host")
        torch.cuda.set_device(place.local_rank)
        backend = "nccl"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return current()


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # a DDP reducer still alive when its process group goes aborts the process at exit
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward hands each rank the gradient of its own rows, summed over the ranks.

    Every rank computes the same loss of the gathered batch, so the summed gradient is ``N`` times the gradient of
    that loss; DDP's averaging over ``N`` ranks divides it back. Slices may differ in length by a few rows.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        sizes = torch.zeros(world, dtype=torch.int64, device=x.device)
        sizes[dist.get_rank()] = x.shape[0]
        dist.all_reduce(sizes)
        counts = [int(s) for s in sizes.tolist()]
        longest = max(counts)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.start = sum(counts[: dist.get_rank()])
        ctx.length = x.shape[0]
        return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.start: ctx.start + ctx.length]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` ``[B_r, ...]`` concatenated in rank order, differentiable (see :class:`_GatherWithGrad`)."""
    return _GatherWithGrad.apply(x)


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """The command that runs ``encoderguard ARGV`` on ``nproc`` processes of this host under ``torchrun``."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an integer >= 1, got {nproc!r}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "encoderguard", *argv]


def without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` / ``--nproc=N`` (the workers must not launch again)."""
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--nproc":
            skip = True
            continue
        if item.startswith("--nproc="):
            continue
        out.append(item)
    return out


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``encoderguard ARGV`` on ``nproc`` local processes under ``torchrun``; returns its exit code.

    The workers' standard output and error are this process's: rank 0 prints the command's result, the others
    stay silent. ``OMP_NUM_THREADS`` defaults to the host's cores divided among the processes.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    sys.stdout.flush()
    sys.stderr.flush()
    return subprocess.run(torchrun_command(nproc, without_nproc(argv)), env=env, check=False).returncode

