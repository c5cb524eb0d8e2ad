"""The demo UNet below 0.3 of the MACs, where the benchmark grids have no tiec row: the finest
shallow-branch cut (``branch_depth=1``) with keys every 8 and 12 (DDIM 50) or every 7 and 10
(DPM-Solver++ 20), ``hold`` and ``linear`` over t, against fewer steps; 64 samples (labels cycling
0-9, seeds from 20,000), PSNR to the same sampler with every step a key.

The MAC ratio printed is estimated from the calls: a non-key step of the finest cut costs 13.5% of
a key step on this UNet (docs/benchmarks.md, "The UNet shallow branch").

    python benchmarks/scripts/unet_low_budget.py   # about 10 minutes on two CPU cores; output: unet_low_budget.txt
"""
from tiec.bench.metrics import psnr
from tiec.demo import load
from tiec.demo.sampling import sample_digits, to_unit

NON_KEY_SHARE = 0.135
demo = load("unet-digits")
labels, seeds = [i % 10 for i in range(64)], list(range(20_000, 20_064))


def run(scheduler, steps, keys=None, policy="linear", branch=None):
    result = sample_digits(demo, labels, steps=steps, scheduler=scheduler, keys=keys, policy=policy,
                           guidance_scale=2.0, seeds=seeds, branch_depth=branch, coordinate="t")
    return to_unit(result.sample), result


for scheduler, n, key_sets, fewer in (("ddim", 50, ("every:8", "every:12"), (10, 11, 13)),
                                      ("dpm", 20, ("every:7", "every:10"), (4, 5, 6))):
    reference, _ = run(scheduler, n)
    for keys in key_sets:
        for policy in ("hold", "linear"):
            images, result = run(scheduler, n, keys, policy, 1)
            ratio = (result.encoder_calls + (n - result.encoder_calls) * NON_KEY_SHARE) / n
            print(scheduler, n, keys, policy, f"~{ratio:.3f} of the MACs", round(psnr(images, reference), 2), flush=True)
    for m in fewer:
        images, _ = run(scheduler, m)
        print(scheduler, n, f"fewer steps {m}", f"{m / n:.3f}", round(psnr(images, reference), 2), flush=True)
