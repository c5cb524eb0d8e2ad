"""Join the pieces in benchmarks/results into each grid's ``<model>-<sampler>.json/.md/.png`` (as
``tiec bench --part`` does in its own ``--out``), then regenerate the generated tables of
docs/benchmarks.md from them: the fitted rows beside the fixed rules on the same keys ("Fitted
blend weights") and the budget tables ("Budget tables"), each between its HTML-comment markers.

    python benchmarks/scripts/benchmark_docs_tables.py   # after copying new pieces into benchmarks/results
"""
import json
import re
from pathlib import Path

from tiec.bench.report import budget_table, join_pieces, write_results

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
GRIDS = [("dit-digits-dpm", "DiT, DPM-Solver++ 20", "dpm-solver-20"),
         ("unet-digits-dpm", "UNet, DPM-Solver++ 20", "dpm-solver-20"),
         ("dit-digits-ddim", "DiT, DDIM 50", "ddim-50"), ("unet-digits-ddim", "UNet, DDIM 50", "ddim-50")]


def join() -> None:
    """Each grid's pieces of 1,000 samples joined, as the last ``tiec bench --part`` run would."""
    for stem, _, _ in GRIDS:
        write_results(join_pieces(RESULTS, stem, 1000), RESULTS, stem)


def measured(rows: dict, name: str):
    row = rows.get(name)
    return None if row is None or row.get("psnr_db") is None else row


def cell(row) -> str:
    return "not run" if row is None else f"{row['psnr_db']:.1f}"


def fitted_table() -> str:
    lines = ["| grid | split | keys | MACs | `hold` | `linear` over log σ | `linear` over t | fitted (candidate kept) "
             "| fewer steps at ≤ MACs |", "|---|---|---|---|---|---|---|---|---|"]
    for stem, label, preset in GRIDS:
        results = json.loads((RESULTS / f"{stem}.json").read_text())
        rows = {r["name"]: r for r in results["rows"]}
        fewer = [r for r in results["rows"] if r["family"] == "fewer-steps" and r.get("psnr_db") is not None]
        for keys in (preset, "every:2", "every:3", "every:5"):
            branch = "TIEC branch 1 (finest cut)"
            for split, fitted, hold, over_log_sigma, over_t in (
                    ("default", f"TIEC fitted, keys {keys}", f"FasterDiffusion hold, keys {keys}",
                     f"TIEC linear over log σ, keys {keys}", f"TIEC linear, keys {keys}"),
                    ("branch 1", f"{branch} fitted, keys {keys}", f"{branch} hold, keys {keys}", None,
                     f"{branch} linear, keys {keys}")):
                row = measured(rows, fitted)
                if row is None:
                    continue
                best = max((r for r in fewer if r["mac_ratio"] <= row["mac_ratio"] + 1e-9), key=lambda r: r["psnr_db"],
                           default=None)
                linear_t = cell(measured(rows, over_t))
                if split == "branch 1" and measured(rows, over_t):
                    linear_t += " (over the step index)"
                elif linear_t == "not run" and row["fit"]["chosen"] == "linear":  # the fitted row kept it
                    linear_t = f"{row['psnr_db']:.1f} (the fitted row)"
                lines.append(f"| {label} | {split} | {keys} | {row['mac_ratio']:.2f} | {cell(measured(rows, hold))} | "
                             f"{cell(measured(rows, over_log_sigma)) if over_log_sigma else '–'} | {linear_t} | "
                             f"{row['psnr_db']:.1f} ({row['fit']['chosen']}) | "
                             f"{'–' if best is None else str(best['steps']) + ' steps: ' + format(best['psnr_db'], '.1f')} |")
    return "\n".join(lines) + "\n"


def budget_tables() -> str:
    parts = []
    for stem, label, _ in GRIDS:
        table = budget_table(json.loads((RESULTS / f"{stem}.json").read_text()))
        parts.append(f"**Demo {label}** (`benchmarks/results/{stem}.md`):\n\n" + "\n".join(table.splitlines()[2:]) + "\n")
    return "\n".join(parts)


def put(text: str, marker: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {re.escape(marker)} -->\n).*?(<!-- end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"docs/benchmarks.md has no <!-- {marker} --> ... <!-- end --> block")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text, count=1)


if __name__ == "__main__":
    join()
    doc = ROOT / "docs" / "benchmarks.md"
    doc.write_text(put(put(doc.read_text(), "fitted table", fitted_table()), "budget tables", budget_tables()))
    print(f"wrote {doc}")
