"""What ``tiec bench`` writes: results as JSON, a markdown table and a plot; pieces of one grid
joined into one result; the machine a run was measured on.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .._errors import TiecValueError
from .._files import json_text, save_figure, write_atomic
from .grid import PARTS

__all__ = ["BUDGETS", "budget_table", "combine", "join_pieces", "machine", "markdown_table", "plot",
           "write_results"]


def machine() -> dict:
    """The platform, processor, Python and torch versions and torch's thread count of this run."""
    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                python=platform.python_version(), torch=torch.__version__, threads=torch.get_num_threads())


def combine(pieces: Sequence[dict]) -> dict:
    """Join the pieces of one grid (``part`` runs) into one result: the first piece's reference
    row and settings, then every piece's other rows, in the order of :data:`PARTS`."""
    if not pieces:
        raise TiecValueError("combine needs at least one piece")
    keys = ("model", "sampler", "steps", "num_samples", "guidance_scale")
    first = pieces[0]
    for piece in pieces[1:]:
        if any(piece[k] != first[k] for k in keys):
            raise TiecValueError(f"pieces of different grids cannot be combined: {[{k: p[k] for k in keys} for p in pieces]}")
    order = list(PARTS)

    def rank(piece: dict) -> int:
        name = (piece.get("part") or "").partition("/")[0]
        return order.index(name) if name in order else -1

    ordered = sorted(pieces, key=rank)
    rows = {first["rows"][0]["name"]: first["rows"][0]}
    for piece in ordered:  # a row measured by two pieces (a family and one of its key sets) counts once
        for row in piece["rows"]:
            rows.setdefault(row["name"], row)
    rows = list(rows.values())
    return {**first, "part": None, "pieces": [p.get("command") for p in ordered],
            "seconds": round(sum(p["seconds"] for p in pieces), 1), "rows": rows}


def join_pieces(folder: Path, stem: str, num_samples: int) -> dict:
    """The pieces ``<stem>-part-*.json`` in ``folder`` with ``num_samples`` samples, joined
    (:func:`combine`): what ``tiec bench --part`` writes as ``<stem>.json`` after each piece.

    Examples:
        >>> import tempfile
        >>> piece = dict(model="m", sampler="s", steps=2, num_samples=4, guidance_scale=1.0, part="tiec",
        ...              seconds=1.0, command="c", rows=[{"name": "reference"}, {"name": "a"}])
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = (Path(d) / "m-s-part-tiec.json").write_text(json.dumps(piece))
        ...     [row["name"] for row in join_pieces(Path(d), "m-s", 4)["rows"]]
        ['reference', 'a']
    """
    pieces = [json.loads(path.read_text()) for path in sorted(folder.glob(f"{stem}-part-*.json"))]
    return combine([piece for piece in pieces if piece["num_samples"] == num_samples])


def _fmt(value: Any, spec: str, infinite: bool = False) -> str:
    if infinite or (isinstance(value, float) and value == float("inf")):
        return "∞"  # JSON holds null and a `..._is_infinite` flag (tiec._files.json_text)
    if value is None:
        return "–"
    return format(value, spec)


def markdown_table(results: dict) -> str:
    """The results as a markdown table, one row per method, errors spelled out."""
    if "arch" in results:
        lines = [f"{results['description']}; DDIM, {results['steps']} steps a run, median (min–max) of "
                 f"{results['repeats']} runs", "",
                 "| method | encoder/decoder calls | s/step | speed-up | MAC bound | of the bound "
                 "| share a non-key step saves | cache MB |",
                 "|---|---|---|---|---|---|---|---|"]
        for row in results["rows"]:
            cache = row.get("cache_bytes")
            lines.append(f"| {row['name']} | {row['encoder_calls']}/{row['decoder_calls']} "
                         f"| {row['seconds_per_step_median']:.3f} ({row['seconds_per_step_min']:.3f}–"
                         f"{row['seconds_per_step_max']:.3f}) | {row['speedup']:.2f}x | {row['mac_bound']:.2f}x "
                         f"| {row['speedup'] / row['mac_bound']:.0%} "
                         f"| {row.get('saved_share', row['encoder_share']):.3f} "
                         f"| {_fmt(cache / 2**20 if cache is not None else None, '.1f')} |")
        if results.get("splits"):
            lines += ["", "Each split on one image with guidance: the encoder's share of a key step's MACs, the share a "
                      "non-key step saves, and the memory of a `linear` cache (two keys)", "",
                      "| split | image | encoder share | saved per non-key step | cache MB |", "|---|---|---|---|---|"]
            for row in results["splits"]:
                lines.append(f"| {row['split']} | {row['latent'] * 8} px | {row['encoder_share']:.3f} "
                             f"| {row['saved_share']:.3f} | {row['cache_bytes'] / 2**20:.1f} |")
        return "\n".join(lines) + "\n"
    lines = [
        f"{results['model']}, {results['scheduler']} {results['steps']} steps, guidance {results['guidance_scale']}, "
        f"{results['num_samples']} samples; wall time: median (min–max) of {results['repeats']} runs of "
        f"{results['timing_batch']} images",
        "",
        "| method | MACs/image | MAC ratio | enc/dec calls | wall s | PSNR dB | SSIM | max err | FD | accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        if row["error"]:
            lines.append(f"| {row['name']} | could not run: `{row['error']}` | | | | | | | | |")
            continue
        wall = (f"{row['seconds_median']:.2f} ({row['seconds_min']:.2f}–{row['seconds_max']:.2f})"
                if "seconds_median" in row else "–")
        lines.append(
            f"| {row['name']} | {_fmt(row['macs_per_image'] / 1e6 if row['macs_per_image'] else None, '.1f')} M "
            f"| {_fmt(row.get('mac_ratio'), '.3f')} | {_fmt(row['encoder_calls'], 'd')}/{row['decoder_calls']} | {wall} "
            f"| {_fmt(row['psnr_db'], '.2f', row.get('psnr_db_is_infinite', False))} | {_fmt(row['ssim'], '.4f')} | {_fmt(row['max_abs_error'], '.3f')} "
            f"| {_fmt(row['frechet_distance'], '.3f')} | {_fmt(row['accuracy'], '.3f')} |")
    if results.get("part") is None:
        lines += ["", budget_table(results)]
    return "\n".join(lines) + "\n"


#: The families of tiec's own rows, and of the rows they are weighed against, in :func:`budget_table`.
TIEC_FAMILIES = ("tiec", "fitted", "branch", "configured")
RIVAL_FAMILIES = ("fewer-steps", "fasterdiffusion", "peer")
BUDGETS = (0.2, 0.3, 0.4, 0.5, 0.6)
#: A row is within a budget up to 1% above it: keys every 5 of 50 steps cost 0.201 of the MACs
#: (the non-key steps' decoder), beside 10 steps at 0.200.
BUDGET_TOLERANCE = 0.01


def budget_table(results: dict, budgets: Sequence[float] = BUDGETS) -> str:
    """At each MAC budget, the best tiec row against the best row of fewer steps, FasterDiffusion
    and the peers at the same budget (PSNR to every step a key), and the margin; a markdown table.
    A row is within a budget up to :data:`BUDGET_TOLERANCE` (1%) above it.

    Examples:
        >>> rows = [dict(name="TIEC a", family="tiec", mac_ratio=0.35, psnr_db=40.0, error=None),
        ...         dict(name="fewer steps: 7", family="fewer-steps", mac_ratio=0.35, psnr_db=38.5, error=None)]
        >>> print(budget_table({"rows": rows}, [0.4]).splitlines()[-1])
        | 0.40 | TIEC a (0.350): 40.0 | fewer steps: 7 (0.350): 38.5 | +1.5 |
    """
    def best(families: Sequence[str], budget: float) -> Optional[dict]:
        rows = [r for r in results["rows"] if r["family"] in families and not r.get("error")
                and r.get("psnr_db") is not None and r.get("mac_ratio") is not None
                and r["mac_ratio"] <= budget * (1 + BUDGET_TOLERANCE)]
        return max(rows, key=lambda r: r["psnr_db"], default=None)

    def cell(row: Optional[dict]) -> str:
        return "–" if row is None else f"{row['name']} ({row['mac_ratio']:.3f}): {row['psnr_db']:.1f}"

    lines = ["At each MAC budget: the best tiec row (families " + ", ".join(TIEC_FAMILIES) + ") and the best of "
             "fewer steps, FasterDiffusion and the peers within it, up to 1% above it (PSNR to every step a key, dB)",
             "",
             "| budget | best tiec | best other | margin |", "|---|---|---|---|"]
    for budget in budgets:
        ours, theirs = best(TIEC_FAMILIES, budget), best(RIVAL_FAMILIES, budget)
        margin = "–" if ours is None or theirs is None else f"{ours['psnr_db'] - theirs['psnr_db']:+.1f}"
        lines.append(f"| {budget:.2f} | {cell(ours)} | {cell(theirs)} | {margin} |")
    return "\n".join(lines) + "\n"


FAMILY_STYLE = {"reference": ("k", "*"), "fewer-steps": ("tab:gray", "o"), "fasterdiffusion": ("tab:orange", "s"),
                "tiec": ("tab:blue", "^"), "branch": ("tab:purple", "v"), "fitted": ("tab:olive", "*"),
                "configured": ("tab:red", "P"),
                "peer": ("tab:green", "D")}


def plot(results: dict, path: Path) -> None:
    """PSNR to the reference and FD to the real digits against MACs, one marker style per family
    (speed results: measured speed-up against the MAC bound)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if "arch" in results:
        figure, axis = plt.subplots(figsize=(8, 4.5))
        names = [row["name"] for row in results["rows"]]
        ys = range(len(names))
        axis.barh([y + 0.2 for y in ys], [row["mac_bound"] for row in results["rows"]], 0.4, label="MAC bound",
                  color="tab:gray")
        axis.barh([y - 0.2 for y in ys], [row["speedup"] for row in results["rows"]], 0.4, label="measured",
                  color="tab:blue")
        axis.set_yticks(list(ys), names, fontsize=7)
        axis.invert_yaxis()
        axis.set_xlabel("speed-up over every step a key")
        axis.legend()
        axis.set_title(results["description"], fontsize=8)
        save_figure(figure, path)
        return

    rows = [r for r in results["rows"] if r.get("mac_ratio") is not None and r["psnr_db"] is not None]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, metric, label in ((axes[0], "psnr_db", "PSNR to the reference (dB), higher is better"),
                                (axes[1], "frechet_distance", "FD to real digits, lower is better")):
        for family, (color, marker) in FAMILY_STYLE.items():
            points = sorted((r["mac_ratio"], r[metric]) for r in rows if r["family"] == family
                            and r[metric] not in (None, float("inf")))
            if not points:
                continue
            xs, ys = zip(*points)
            axis.plot(xs, ys, color=color, marker=marker, linestyle="-" if family == "fewer-steps" else "none",
                      label=family)
        axis.set_xlabel("MACs per image / reference")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[1].set_yscale("log")  # a run that breaks down sits orders of magnitude above the rest
    axes[0].legend()
    figure.suptitle(f"{results['model']}, {results['scheduler']} {results['steps']} steps")
    save_figure(figure, path)


def write_results(results: dict, out: Path, stem: str) -> list[Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    for path, text in ((paths[0], json_text(results)), (paths[1], markdown_table(results))):
        write_atomic(path, text)
    plot(results, paths[2])
    return paths
