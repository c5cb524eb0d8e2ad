"""The benchmark's metrics: each checked against a value known in closed form."""

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tiec import count_flops
from tiec.bench.metrics import frechet_distance, max_abs_error, psnr, ssim


def images(seed, shape=(3, 2, 12, 12)):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_psnr_of_identical_images_is_infinite_and_of_a_known_error_is_exact():
    x = images(0)
    assert psnr(x, x) == math.inf
    assert psnr(x, (x + 0.01).clamp(max=2)) == pytest.approx(40.0)
    assert psnr(x * 255, (x + 0.1) * 255, data_range=255) == pytest.approx(20.0)


def test_max_abs_error():
    x = images(1)
    y = x.clone()
    y[2, 1, 3, 4] += 0.25
    assert max_abs_error(x, y) == pytest.approx(0.25)


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    x = images(2)
    noisy = (x + 0.2 * images(3)).clamp(0, 1)
    assert ssim(x, x) == 1.0
    assert ssim(x, noisy) < ssim(x, (x + 0.02 * images(3)).clamp(0, 1)) < 1.0


def test_ssim_of_a_constant_shift_matches_the_formula():
    # Same structure, means differing by d: SSIM = (2 μx μy + C1) / (μx² + μy² + C1) at every position.
    x = torch.full((1, 1, 11, 11), 0.3, dtype=torch.float64)
    y = torch.full((1, 1, 11, 11), 0.5, dtype=torch.float64)
    c1 = 0.01**2
    assert ssim(x, y) == pytest.approx((2 * 0.3 * 0.5 + c1) / (0.3**2 + 0.5**2 + c1), rel=1e-9)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000))
def test_frechet_distance_of_a_set_with_itself_is_zero(seed):
    f = torch.randn(200, 6, generator=torch.Generator().manual_seed(seed))
    assert abs(frechet_distance(f, f)) < 1e-8


def test_frechet_distance_of_gaussians_in_closed_form():
    # N(0, I) against N(m, s² I): |m|² + d (1 - s)², from samples with exactly those moments.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 4, generator=g, dtype=torch.float64)
    z = (z - z.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # whiten exactly
    shifted = 2.0 * z + torch.tensor([1.0, 0.0, 0.0, 2.0], dtype=torch.float64)
    assert frechet_distance(z, shifted) == pytest.approx(5.0 + 4 * (1 - 2.0) ** 2, rel=1e-9)


def test_mac_count_of_a_linear_layer_is_exact():
    layer = torch.nn.Linear(16, 8)
    flops, _ = count_flops(layer, torch.zeros(5, 16))
    assert flops // 2 == 5 * 16 * 8  # multiply-accumulates; the bias add is not counted by torch


def test_peak_memory_sees_a_large_allocation():
    # In a fresh process: memory this one freed earlier may be reused without growing the resident set.
    code = (
        "import torch\n"
        "from tiec.bench.metrics import PeakMemory\n"
        "with PeakMemory() as peak:\n"
        "    block = torch.ones(25_000_000)\n"
        "    block += 1\n"
        "    del block\n"
        "print(peak.bytes)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    measured = out.stdout.strip()
    if measured == "None":
        pytest.skip("no /proc/self/statm here")
    assert int(measured) >= 50_000_000  # 100 MB allocated, touched and freed inside the block


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="images must be two"):
        psnr(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="features must be"):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
