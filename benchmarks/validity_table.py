"""Print the markdown tables of results_validity.md from the committed summaries (no model is run).

    .venv/bin/python benchmarks/validity_table.py benchmarks/out/validity/summary.json \\
        [benchmarks/out/robustness/summary.json]
"""

from __future__ import annotations

import json
import sys
from typing import Any

POWER = ("watermark", "watermark_aligned", "di", "combined", "combined_aligned", "combined_copycheck",
         "combined_aligned_copycheck")


def _cell(rate: dict[str, Any]) -> str:
    n, hits = rate["n"], rate["hits"]
    if not n:
        return "-"
    low, high = rate["ci95"]
    return f"{hits}/{n} = {hits / n:.3f} [{low:.3f}, {high:.3f}]"


def validity(summary: dict[str, Any]) -> str:
    names = {"watermark": "watermark (calibrated)", "watermark_aligned": "watermark, aligned (calibrated)",
             "di": "dataset inference", "combined": "combined (verify all --align none)",
             "combined_aligned": "combined (verify all --align auto, no copy check)",
             "combined_copycheck": "combined, owner copy check (--align none)",
             "combined_aligned_copycheck": "combined, owner copy check (verify all default)",
             "wm_binomial_uncalibrated": "watermark, binomial p < alpha (old test)",
             "wm_aligned_binomial_uncalibrated": "aligned watermark, binomial p < alpha"}
    lines = [f"False positives over {summary['innocent_tests']} tests of innocent encoders (alpha "
             f"{summary['alpha']}); hits/n = rate [95 % Clopper-Pearson interval]:", "",
             "| method | false positives |", "|---|---|"]
    for key, label in names.items():
        if key in summary["false_positives"]:
            lines.append(f"| {label} | {_cell(summary['false_positives'][key])} |")
    kinds = sorted(summary["by_kind"])
    lines += ["", "By kind of innocent (stolen verdicts / tests):", "",
              "| kind | " + " | ".join(k.split(":", 1)[1] for k in kinds) + " |",
              "|---|" + "---|" * len(kinds)]
    for method in ("watermark", "watermark_aligned", "di", "combined", "combined_aligned", "combined_copycheck",
                   "combined_aligned_copycheck"):
        lines.append(f"| {names[method]} | " + " | ".join(
            f"{summary['by_kind'][k][method]['hits']}/{summary['by_kind'][k][method]['n']}" for k in kinds) + " |")
    cells = sorted(summary["power"], key=lambda k: (k.split(":")[1], int(k.split(":")[2])))
    lines += ["", "Power: copies called stolen (5 copies per loss and budget, seeds 100-104):", "",
              "| copy | " + " | ".join(names[m] for m in POWER) + " |", "|---" * (len(POWER) + 1) + "|"]
    for cell in cells:
        row = summary["power"][cell]
        _, loss, budget = cell.split(":")
        lines.append(f"| {loss}, {budget} queries | " + " | ".join(
            f"{row[m]['hits']}/{row[m]['n']}" for m in POWER) + " |")
    return "\n".join(lines)


def robustness(summary: dict[str, Any]) -> str:
    methods = ("watermark", "watermark_aligned", "di", "combined_aligned", "verify_all")
    lines = ["Copies called stolen (2,000-query copies, 3 per loss) / innocents called stolen, per transform:", "",
             "| transform | " + " | ".join(methods) + " | verify all per loss (mse, infonce, softnn) |",
             "|---|" + "---|" * (len(methods) + 1)]
    for transform, cell in summary["cells"].items():
        parts = []
        for m in methods:
            c, i = cell[f"copies:{m}"], cell[f"innocents:{m}"]
            parts.append(f"{c['hits']}/{c['n']} / " + (f"{i['hits']}/{i['n']}" if i["n"] else "-"))
        per_loss = ", ".join(f"{cell[f'copies-{loss}:verify_all']['hits']}/"
                             f"{cell[f'copies-{loss}:verify_all']['n']}" for loss in ("mse", "infonce", "softnn"))
        lines.append(f"| {transform} | " + " | ".join(parts) + f" | {per_loss} |")
    return "\n".join(lines)


def main() -> None:
    print(validity(json.loads(open(sys.argv[1]).read())))
    if len(sys.argv) > 2:
        print()
        print(robustness(json.loads(open(sys.argv[2]).read())))


if __name__ == "__main__":
    main()
