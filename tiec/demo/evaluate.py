"""Score a demo model with the demo classifier: accuracy on the requested class.

    python -m tiec.demo.evaluate --model dit-digits --num-images 1000 --steps 50 --keys all

Samples ``--num-images`` digits (labels cycling 0-9, noise from ``seed + i``) with DDIM and prints
a JSON record with the classifier's accuracy, overall and per class.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from . import load
from .sampling import sample_digits

__all__ = ["evaluate", "main"]


@torch.no_grad()
def evaluate(num_images: int = 1000, *, model: str = "dit-digits", steps: int = 50, keys: str = "all", policy: str = "linear",
             guidance_scale: float = 2.0, encoder_blocks: int | None = None, seed: int = 0,
             batch_size: int = 250) -> dict:
    demo = load(model)
    classifier = load("digits-classifier")
    labels = [i % demo.num_classes for i in range(num_images)]
    correct = torch.zeros(demo.num_classes)
    start = time.perf_counter()
    for begin in range(0, num_images, batch_size):
        batch = labels[begin:begin + batch_size]
        result = sample_digits(demo, batch, steps=steps, keys=keys, policy=policy, guidance_scale=guidance_scale,
                               encoder_blocks=encoder_blocks, seed=seed + begin)
        predicted = classifier(result.sample.clamp(-1, 1)).argmax(1)
        for label, guess in zip(batch, predicted.tolist()):
            correct[label] += float(label == guess)
    per_class = (correct / torch.bincount(torch.tensor(labels), minlength=demo.num_classes)).tolist()
    return dict(model=model, num_images=num_images, steps=steps, scheduler="ddim", keys=keys, policy=policy,
                guidance_scale=guidance_scale, encoder_blocks=encoder_blocks, seed=seed,
                accuracy=round(float(correct.sum()) / num_images, 4),
                per_class=[round(a, 3) for a in per_class], seconds=round(time.perf_counter() - start, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiec.demo.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dit-digits", choices=["dit-digits", "unet-digits"])
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--keys", default="all")
    parser.add_argument("--policy", default="linear")
    parser.add_argument("--guidance-scale", type=float, default=2.0)
    parser.add_argument("--encoder-blocks", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(evaluate(args.num_images, model=args.model, steps=args.steps, keys=args.keys, policy=args.policy,
                              guidance_scale=args.guidance_scale, encoder_blocks=args.encoder_blocks,
                              seed=args.seed), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
