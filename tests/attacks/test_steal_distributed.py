"""``steal --nproc 2``: rank 0 pays for the answers once, both processes train the copy, rank 0 saves it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from encoderguard.models.checkpoint import CARD_FILE, WEIGHTS_FILE


def test_two_process_steal_pays_once_and_saves_once(tiny_checkpoint, tmp_path):
    out = tmp_path / "copy"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ENCODERGUARD_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "-m", "encoderguard", "steal", "--nproc", "2", "--victim",
                           str(tiny_checkpoint), "--budget", "120", "--epochs", "2", "--batch-size", "32",
                           "--width", "4", "--depth", "2", "--eval-size", "60", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout  # rank 1 prints nothing
    summary = json.loads(lines[0])
    # rank 0 paid the budget; rank 1 read the cache (it raises if it finds anything unpaid)
    assert summary["queries_paid"] == summary["queries_new"] == summary["client_queries"] == 120
    assert summary["epochs"] == 2 and summary["linear_acc"] is not None
    assert {p.name for p in out.iterdir()} == {CARD_FILE, WEIGHTS_FILE, "query_cache"}

