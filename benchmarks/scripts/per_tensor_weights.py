"""Would one weight vector per feature tensor fit better than one shared by all tensors?

Issue #20 asks for per-tensor blend weights "where that is better". At the demo UNet's default
split the cache holds several tensors (the skips at each resolution and the mid block's output);
this script measures, before anything is built, how much of the feature error per-tensor weights
could remove. On the reference trajectories (every step a key, DPM-Solver++ 20 and DDIM 50,
guidance 2), for each non-key evaluation of keys every 3 and 5, least squares over the newest 3
keys to the features there (teacher forcing, the same regression :func:`tiec.fit_blend` starts
from), fitted on 16 inputs (seeds from 50,000) and evaluated on 16 others (seeds from 60,000):
the relative feature error of ``hold``, ``linear`` over t, one shared fitted vector, and one fitted
vector per tensor, averaged over the non-key evaluations after the second key.

    python benchmarks/scripts/per_tensor_weights.py   # a few minutes; output: per_tensor_weights.txt
"""
import torch

from tiec.demo import load
from tiec.demo.sampling import sample_digits
from tiec.policies import Hold, Linear
from tiec.protocol import cached_part
from tiec.schedules import get_schedule


class Recording:
    """Passes through and keeps each encoder call's cached tensors (float64) and time."""

    def __init__(self, split):
        self.split, self.features, self.times = split, [], []

    def encode(self, x, t, **cond):
        features = self.split.encode(x, t, **cond)
        self.features.append([f.detach().double() for f in cached_part(self.split, features)])
        self.times.append(float(t))
        return features

    def decode(self, features, t, **cond):
        return self.split.decode(features, t, **cond)


def trajectories(demo, scheduler, steps, seed):
    recording = Recording(demo.split())
    labels = [i % 10 for i in range(16)]
    sample_digits(demo, labels, steps=steps, scheduler=scheduler, keys="all", policy="hold", guidance_scale=2.0,
                  seeds=list(range(seed, seed + 16)), split=recording)
    return recording.times, recording.features


def solve(pairs, ridge=1e-6):
    """Least squares weights w minimising sum ||sum_j w_j K_j - F||^2 over (keys, target) pairs."""
    gram = sum(torch.stack([torch.stack([(a * b).sum() for b in keys]) for a in keys]) for keys, _ in pairs)
    cross = sum(torch.stack([(a * target).sum() for a in keys]) for keys, target in pairs)
    gram = gram + ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    return torch.linalg.solve(gram, cross)


def error(keys, target, weights):
    blend = sum(w * k for w, k in zip(weights, keys))
    return float((blend - target).norm() / target.norm())


demo = load("unet-digits")
for scheduler, steps in (("dpm", 20), ("ddim", 50)):
    times, fit_set = trajectories(demo, scheduler, steps, 50_000)
    _, test_set = trajectories(demo, scheduler, steps, 60_000)
    count = len(fit_set[0])
    for every in (3, 5):
        key_steps = sorted(get_schedule(f"every:{every}").key_steps(steps))
        totals = {"hold": 0.0, "linear over t": 0.0, "shared fit": 0.0, "per-tensor fit": 0.0}
        queries = [i for i in range(steps) if i not in key_steps and i > key_steps[1]]
        for i in queries:
            used = [k for k in key_steps if k < i][-3:]
            knots = [times[k] for k in used]
            rules = {"hold": Hold().weights(knots, times[i]), "linear over t": Linear().weights(knots, times[i])}
            shared = solve([([fit_set[k][n] for k in used], fit_set[i][n]) for n in range(count)])
            per = [solve([([fit_set[k][n] for k in used], fit_set[i][n])]) for n in range(count)]
            target = torch.cat([f.reshape(-1) for f in test_set[i]])

            def flat(weights_per_tensor):
                return torch.cat([sum(w * test_set[k][n] for w, k in zip(weights_per_tensor[n], used)).reshape(-1)
                                  for n in range(count)])

            for name, weights in (*((r, [w] * count) for r, w in rules.items()), ("shared fit", [shared] * count),
                                  ("per-tensor fit", per)):
                totals[name] += float((flat(weights) - target).norm() / target.norm()) / len(queries)
        print(f"unet-digits default split ({count} tensors), {scheduler} {steps}, keys every {every}, "
              f"{len(queries)} non-key evaluations after the second key:",
              ", ".join(f"{name} {value:.4f}" for name, value in totals.items()), flush=True)
