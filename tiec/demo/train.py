"""Train the demo models on the digits (CPU, fixed seeds, minutes to an hour).

    python -m tiec.demo.train dit-digits --steps 8000 --out tiec/demo/weights/dit-digits
    python -m tiec.demo.train unet-digits --steps 2500 --out tiec/demo/weights/unet-digits
    python -m tiec.demo.train digits-classifier --steps 1500 --out tiec/demo/weights/digits-classifier

Writes ``config.json`` and ``diffusion_pytorch_model.safetensors`` (the EMA weights in fp16, loadable with
``DiTTransformer2DModel.from_pretrained``), ``scheduler_config.json``, ``train_log.json`` and a
loss-curve PNG into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from .data import NUM_CLASSES, RESOLUTION, load_digits

__all__ = ["train_dit", "train_unet", "train_classifier", "DIT_CONFIG", "UNET_CONFIG", "main"]

# 8 blocks of width 128 (4 heads x 32), patch 2 on 16x16: 2.8 M parameters, 64 tokens.
DIT_CONFIG = dict(
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=1,
    out_channels=1,
    num_layers=8,
    sample_size=RESOLUTION,
    patch_size=2,
    num_embeds_ada_norm=NUM_CLASSES,
    norm_type="ada_norm_zero",
)
# Two levels of 32/64 channels with cross-attention on one learned class token (the SD code path:
# down/mid/up blocks with cross-attention), 16x16 single-channel images.
UNET_CONFIG = dict(
    sample_size=RESOLUTION,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)
CLASS_DROPOUT = 0.1
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)


def _save_loss_curve(losses: list[float], path: Path, title: str, ylabel: str = "MSE (eps)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = 50
    smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
              for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, alpha=0.3, label="loss")
    ax.plot(smooth, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fit_eps(model: torch.nn.Module, predict: Any, *, steps: int, batch_size: int, lr: float, seed: int,
             ema_decay: float, progress: bool, desc: str, label_dropout: float = 0.0) -> tuple[Any, list[float]]:
    """Train ``predict(model, x_t, t, y) -> eps`` on the digits with the DDPM loss; EMA weights.

    ``model`` must be built right after ``torch.manual_seed(seed)`` (its initialisation is part of
    the reproducible run). With ``label_dropout``, labels become the null label ``NUM_CLASSES``.
    """
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    images, labels = load_digits()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    alphas = DDPMScheduler(**SCHEDULER_CONFIG).alphas_cumprod
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses: list[float] = []
    model.train()
    for step in tqdm(range(steps), disable=not progress, desc=desc):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        x0, y = images[index], labels[index]
        if label_dropout:
            y = torch.where(torch.rand(batch_size, generator=generator) < label_dropout, NUM_CLASSES, y)
        t = torch.randint(0, len(alphas), (batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise  # (B, 1, 16, 16)
        loss = torch.nn.functional.mse_loss(predict(model, x_t, t, y), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)
        losses.append(loss.item())
    return ema, losses


def _finish(out: Path, name: str, losses: list[float], model: torch.nn.Module, start: float, **fields: Any) -> dict:
    """Write the schedule, the training record and the loss curve next to the saved weights."""
    (out / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2) + "\n")
    record = dict(model=name, **fields, seconds=round(time.perf_counter() - start, 1),
                  final_loss_mean_100=sum(losses[-100:]) / min(100, len(losses)),
                  parameters=sum(p.numel() for p in model.parameters()),
                  torch=torch.__version__, threads=torch.get_num_threads())
    (out / "train_log.json").write_text(json.dumps(record, indent=2) + "\n")
    _save_loss_curve(losses, out / "loss.png", f"{name}, {fields['steps']} steps")
    return record


def train_dit(out: Path, *, steps: int, batch_size: int = 64, lr: float = 3e-4, seed: int = 0,
              ema_decay: float = 0.999, progress: bool = True) -> dict:
    """Train the class-conditional demo DiT (eps prediction, DDPM linear betas) and save it.

    Class dropout (0.1, null label 10) is the model's own, in its label embedding.
    """
    from diffusers import DiTTransformer2DModel

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(**DIT_CONFIG)
    ema, losses = _fit_eps(model, lambda m, x, t, y: m(x, timestep=t, class_labels=y).sample, steps=steps,
                           batch_size=batch_size, lr=lr, seed=seed, ema_decay=ema_decay, progress=progress,
                           desc="dit-digits")
    out.mkdir(parents=True, exist_ok=True)
    # fp16 halves the shipped file (5.6 MB); the demo loads it back in float32.
    ema.to(torch.float16).save_pretrained(out, safe_serialization=True)
    return _finish(out, "dit-digits", losses, model, start, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                   ema_decay=ema_decay)


def train_unet(out: Path, *, steps: int, batch_size: int = 64, lr: float = 3e-4, seed: int = 0,
               ema_decay: float = 0.999, progress: bool = True) -> dict:
    """Train the class-conditional demo UNet: cross-attention on a learned token per class.

    Labels are dropped to the null token ``NUM_CLASSES`` with probability 0.1 (for guidance).
    Writes the UNet (diffusers format) and ``class_tokens.safetensors`` (``(11, 32)``).
    """
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    start = time.perf_counter()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    tokens = torch.nn.Embedding(NUM_CLASSES + 1, UNET_CONFIG["cross_attention_dim"])
    modules = torch.nn.ModuleDict({"unet": unet, "tokens": tokens})

    def predict(m: Any, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return m["unet"](x, t, encoder_hidden_states=m["tokens"](y)[:, None]).sample  # one token per image

    ema, losses = _fit_eps(modules, predict, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                           ema_decay=ema_decay, progress=progress, desc="unet-digits", label_dropout=CLASS_DROPOUT)
    out.mkdir(parents=True, exist_ok=True)
    ema["unet"].to(torch.float16).save_pretrained(out, safe_serialization=True)
    save_file({"weight": ema["tokens"].weight.detach().contiguous()}, str(out / "class_tokens.safetensors"))
    return _finish(out, "unet-digits", losses, modules, start, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                   ema_decay=ema_decay, class_dropout=CLASS_DROPOUT)


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift by up to one pixel and add a little noise (the classifier must read model samples)."""
    shifts = torch.randint(-1, 2, (2,), generator=generator).tolist()
    images = torch.roll(images, shifts=shifts, dims=(2, 3))
    return images + 0.1 * torch.randn(images.shape, generator=generator)


def train_classifier(out: Path, *, steps: int, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                     progress: bool = True) -> dict:
    """Train the digit classifier on 80% of the digits; report accuracy on the held-out 20%."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from .classifier import DigitClassifier

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = load_digits()
    order = torch.randperm(len(images), generator=generator)
    held_out = order[: len(order) // 5]
    train = order[len(order) // 5 :]
    model = DigitClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses: list[float] = []
    start = time.perf_counter()
    for _ in tqdm(range(steps), disable=not progress, desc="digits-classifier"):
        index = train[torch.randint(0, len(train), (batch_size,), generator=generator)]
        logits = model(_augment(images[index], generator))
        loss = torch.nn.functional.cross_entropy(logits, labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[held_out]).argmax(1) == labels[held_out]).float().mean().item()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    record = dict(model="digits-classifier", steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                  seconds=round(time.perf_counter() - start, 1), held_out_accuracy=round(accuracy, 4),
                  held_out_images=len(held_out), torch=torch.__version__)
    (out / "train_log.json").write_text(json.dumps(record, indent=2) + "\n")
    _save_loss_curve(losses, out / "loss.png", f"digits-classifier, {steps} steps", ylabel="cross-entropy")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiec.demo.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["dit-digits", "unet-digits", "digits-classifier"])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.model == "digits-classifier":
        record = train_classifier(args.out, steps=args.steps, seed=args.seed, progress=not args.quiet)
    elif args.model == "unet-digits":
        record = train_unet(args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                            progress=not args.quiet)
    else:
        record = train_dit(args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                           progress=not args.quiet)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
