"""What ``tiec calibrate`` writes: the search's JSON, the validated front as a markdown table and
a plot, and the recommended configuration file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .._files import json_text, save_figure, write_atomic
from ..config import TiecConfig

__all__ = ["markdown_table", "write_calibration"]


def markdown_table(results: dict) -> str:
    """The validated front as a markdown table: each point's held-out PSNR beside the best uniform
    schedule and the best fewer-steps run at the same or lower MACs."""
    def db(value: Optional[float]) -> str:
        return "–" if value is None else f"{value:.1f}"

    def margin(value: Optional[float]) -> str:
        return "–" if value is None else f"{value:+.1f}"

    lines = [f"Calibrated front of {results['name']}, {results['steps']} steps, on {results['held_out_inputs']} "
             f"held-out inputs (PSNR to every step a key, dB). Command: `{results.get('command', '')}`", "",
             "| MACs | keys | policy, coordinate, depth | held-out | best uniform at ≤ MACs | margin "
             "| fewer steps at ≤ MACs | margin |", "|---|---|---|---|---|---|---|---|"]
    fewer = {f["steps"]: f for f in results["fewer_steps"]}
    for point in results["front_comparison"]:
        uniform_best = point["best_uniform"]
        uniform_text = "–" if uniform_best is None else (
            f"{len(uniform_best['keys'])} keys, {uniform_best['policy']}, {uniform_best['coordinate']}, depth "
            f"{uniform_best['depth']} ({uniform_best['mac_ratio']:.2f}): {db(uniform_best['held_out_psnr_db'])}")
        n = point["fewer_steps"]
        fewer_text = "–" if n is None else f"{n} steps ({fewer[n]['mac_ratio']:.2f}): {db(fewer[n]['held_out_psnr_db'])}"
        lines.append(f"| {point['mac_ratio']:.3f} | {len(point['keys'])}: `{','.join(map(str, point['keys']))}` | "
                     f"{point['policy']}, {point['coordinate']}, {point['depth']} | {db(point['held_out_psnr_db'])} | "
                     f"{uniform_text} | {margin(point['margin_over_uniform_db'])} | {fewer_text} | "
                     f"{margin(point['margin_over_fewer_steps_db'])} |")
    if results.get("fitted"):
        lines += ["", "Fitted weights (`tiec.fit_blend`: fitted on the calibration inputs, every candidate scored on "
                  "the held-out inputs; the best kept):", "",
                  "| MACs | keys | depth | held-out | best candidate |", "|---|---|---|---|---|"]
        for row in results["fitted"]:
            lines.append(f"| {row['mac_ratio']:.3f} | {len(row['keys'])}: `{','.join(map(str, row['keys']))}` | "
                         f"{row['depth']} | {db(row['held_out_psnr_db'])} | {row['chosen']} |")
    return "\n".join(lines) + "\n"


def write_calibration(results: dict, out: Path) -> list[Path]:
    """``<name>-calibration.json``, ``.md`` (the front's table), ``.png`` and the recommended
    ``<name>-config.json``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    stem = results["name"] + ("-quick" if results["quick"] else "")
    paths = [out / f"{stem}-calibration.json", out / f"{stem}-calibration.png", out / f"{stem}-config.json",
             out / f"{stem}-calibration.md"]
    write_atomic(paths[0], json_text(results))
    write_atomic(paths[3], markdown_table(results))
    TiecConfig.from_dict(results["config"]).save(paths[2])

    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    validated = [r for r in results["candidates"] if "held_out_psnr_db" in r]
    front = sorted((r["mac_ratio"], r["held_out_psnr_db"]) for r in validated if r["front"])
    searched = [r for r in validated if "searched" in r["grids"]]
    for policy, color in (("hold", "tab:orange"), ("linear", "tab:blue")):
        points = [(r["mac_ratio"], r["held_out_psnr_db"]) for r in searched if r["policy"] == policy]
        if points:
            axis.scatter(*zip(*points), color=color, marker="s" if policy == "hold" else "^", s=16, alpha=0.6,
                         label=f"uniform schedules, {policy}")
    benchmark = [r for r in validated if "benchmark" in r["grids"]]
    for policy, marker in zip(dict.fromkeys(r["policy"] for r in benchmark), "xP+*1"):
        points = [(r["mac_ratio"], r["held_out_psnr_db"]) for r in benchmark if r["policy"] == policy]
        axis.scatter(*zip(*points), color="black", marker=marker, s=30, label=f"benchmark grid, {policy}")
    if front:
        axis.plot(*zip(*front), "-o", color="tab:red", label="calibrated front")
    fewer = sorted((r["mac_ratio"], r["held_out_psnr_db"]) for r in results["fewer_steps"])
    axis.plot(*zip(*fewer), "--", color="tab:gray", marker="o", label="fewer steps")
    axis.set_xlabel("MACs per image / every step a key")
    axis.set_ylabel("PSNR to every step a key, held-out inputs (dB)")
    axis.set_title(f"{results['name']}, {results['steps']} steps", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    save_figure(figure, paths[1])
    return paths
