"""Run under torchrun by tests/train/test_distributed.py: checks of the distributed machinery on 2 CPU processes.

Writes ``OUT_DIR/rank<r>.json`` with the gradient of a DDP step next to the one-process gradient of the same global
batch, and the order in which the ranks ran a ``wait_turn``/``end_turn`` block.
"""

import json
import sys
from pathlib import Path

import torch
from torch import nn

from encoderguard.train.distributed import init_from_env, shutdown
from encoderguard.train.ntxent_loss import NTXentLoss


class TwoViews(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(a), self.net(b)


def main(out_dir: Path) -> None:
    place = init_from_env("cpu")
    torch.manual_seed(0)
    model = TwoViews()
    reference = TwoViews()
    reference.load_state_dict(model.state_dict())
    # 9 rows: slices of 5 and 4, so the gather of unequal slices is exercised
    a, b = torch.randn(9, 6), torch.randn(9, 6)
    criterion = NTXentLoss(0.5)

    shard = place.shard(torch.arange(9))
    ddp = place.wrap(model, "cpu")
    z1, z2 = ddp(a[shard], b[shard])
    loss = criterion(place.gather(z1), place.gather(z2))
    loss.backward()
    loss_value = float(loss.detach())
    del ddp, z1, z2, loss  # DDP's reducer must go before its process group

    r1, r2 = reference(a, b)
    ref_loss = criterion(r1, r2)
    ref_loss.backward()
    pairs = zip(model.parameters(), reference.parameters(), strict=True)
    diff = max(float((p.grad - q.grad).abs().max()) for p, q in pairs)
    scale = max(float(q.grad.abs().max()) for q in reference.parameters())

    order_file = out_dir / "order.txt"
    place.wait_turn()
    with order_file.open("a") as fh:
        fh.write(f"{place.rank}\n")
    place.end_turn()

    result = {"rank": place.rank, "world_size": place.world_size, "shard": shard.tolist(), "loss": loss_value,
              "ref_loss": float(ref_loss.detach()), "max_grad_diff": diff, "grad_scale": scale,
              "mean": place.mean([float(place.rank)]), "sum": place.sum([place.rank + 1])}
    (out_dir / f"rank{place.rank}.json").write_text(json.dumps(result))
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
