"""The demo DiT with DDIM 50 at about 0.2 of the MACs: `linear` and `polynomial(2)` over t on keys
every 5, with a second key at step 1 (two placements), or with a key at the last step; 11 steps
for comparison. 64 samples (labels cycling 0-9, seeds from 20,000), PSNR to every step a key.
Prints the keys, the policy, the encoder calls and the PSNR.

    python benchmarks/scripts/dit_ddim_every5_keys.py   # about 3 minutes on two CPU cores; output: dit_ddim_every5_keys.txt
"""
from tiec.bench.metrics import psnr
from tiec.demo import load
from tiec.demo.sampling import sample_digits, to_unit

demo = load("dit-digits")
labels, seeds = [i % 10 for i in range(64)], list(range(20_000, 20_064))


def run(keys=None, policy="linear", steps=50):
    result = sample_digits(demo, labels, steps=steps, scheduler="ddim", keys=keys, policy=policy, guidance_scale=2.0,
                           seeds=seeds, coordinate="t")
    return to_unit(result.sample), result


reference, _ = run()
for keys in ("every:5", [0, 1] + list(range(5, 50, 5)), [0, 1] + list(range(6, 50, 5)), list(range(0, 50, 5)) + [49]):
    for policy in ("linear", "polynomial(2)"):
        images, result = run(keys, policy)
        name = keys if isinstance(keys, str) else ",".join(map(str, keys))
        print(name, policy, result.encoder_calls, round(psnr(images, reference), 2), flush=True)
images, _ = run(steps=11)
print("fewer steps 11", round(psnr(images, reference), 2))
