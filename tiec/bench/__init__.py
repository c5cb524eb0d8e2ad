"""``tiec bench``'s application: quality against compute on the demo models, side by side with
peers, and speed on full-size architectures.

- :mod:`tiec.bench.grid`: which rows a run has (methods, fewer-steps rows, peers, ``--part`` cuts);
- :mod:`tiec.bench.runner`: runs a grid on a demo model and measures every row;
- :mod:`tiec.bench.peers`: runs the peers (DeepCache, diffusers' cache hooks) from their packages;
- :mod:`tiec.bench.metrics`: PSNR, SSIM, Fréchet distance, peak memory;
- :mod:`tiec.bench.speed`: wall time per step of SD 1.5's UNet and DiT-XL/2 against the MAC bound;
- :mod:`tiec.bench.report`: the JSON, markdown table and plot a run writes; pieces joined.
"""

from .grid import PARTS, SAMPLERS, Method, fewer_steps, method_grid, part_filter
from .report import combine, join_pieces, markdown_table, write_results
from .runner import bench_demo
from .speed import bench_speed

__all__ = ["PARTS", "SAMPLERS", "Method", "bench_demo", "bench_speed", "combine", "fewer_steps", "join_pieces",
           "markdown_table", "method_grid", "part_filter", "write_results"]
