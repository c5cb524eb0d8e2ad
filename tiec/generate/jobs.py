"""The jobs ``tiec generate`` runs: a demo model, or a diffusers pipeline from a local folder.

A *job* makes images ``indices`` of its run for a given key schedule
(``job(keys, indices, progress=...)``); the command line times it, counts its MACs in a separate
pass and writes the files. Image ``i`` of a job always starts from the noise of seed ``seed + i``,
whatever else is sampled beside it, so the images can be made in batches, by several processes.

Bad input raises :class:`UsageError`, whose message names the command-line option and the fix.
"""

from __future__ import annotations

import inspect
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .._errors import TiecError, UsageError
from ..policies import Lookahead, get_policy
from ..schedules import get_schedule

__all__ = ["DEMO_MODELS", "DTYPES", "PIPELINES", "DemoJob", "Images", "PipelineJob", "check_device",
           "check_keys_and_policy", "make_job", "parse_labels"]

#: The demo models ``tiec generate`` samples (``tiec.demo.MODELS`` less the classifier).
DEMO_MODELS = ("dit-digits", "unet-digits")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

#: Pipeline classes ``tiec generate --model PATH`` runs, and what conditions them.
PIPELINES = {
    "StableDiffusionPipeline": "prompt",
    "StableDiffusionXLPipeline": "prompt",
    "IFPipeline": "prompt",
    "DiTPipeline": "class-labels",
}


@dataclass(frozen=True)
class Images:
    """A job's output: ``pixels`` is ``(N, C, H, W)`` float32 in [0, 1] on the CPU."""

    pixels: torch.Tensor
    key_steps: tuple[int, ...]
    encoder_calls: int
    decoder_calls: int
    key_errors: dict[int, float] = field(default_factory=dict)
    """The quality monitor (:attr:`tiec.SampleResult.key_errors`), where the sampler reports it."""


def check_keys_and_policy(keys: str, policy: str, steps: int) -> None:
    """Validate ``--keys`` and ``--policy`` before any work, naming the option."""
    try:
        get_schedule(keys).key_steps(steps)
    except TiecError as error:
        raise UsageError(f"--keys {keys!r}: {error}") from None
    try:
        get_policy(policy)
    except TiecError as error:
        raise UsageError(f"--policy {policy!r}: {error}") from None


def check_device(device: str) -> None:
    """Validate ``--device`` before loading anything: a torch device string this machine has."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device!r} is not a torch device; use cpu, cuda, cuda:1 or mps") from None
    available = {"cpu": lambda: True, "cuda": torch.cuda.is_available,
                 "mps": lambda: bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()}
    if parsed.type in available and not available[parsed.type]():
        raise UsageError(f"--device {device!r}: this machine has no {parsed.type.upper()} device torch can use; "
                         "use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device!r}: there are {torch.cuda.device_count()} CUDA devices")


def parse_labels(text: Optional[str], num_classes: int) -> list[int]:
    """``--class-labels`` as a list; every class when ``None``."""
    if text is None:
        return list(range(num_classes))
    try:
        labels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--class-labels {text!r} is not a comma-separated list of integers, e.g. 0,3,7") from None
    bad = [label for label in labels if not 0 <= label < num_classes]
    if bad or not labels:
        raise UsageError(f"--class-labels {text!r}: labels must be in [0, {num_classes - 1}], got {bad or 'none'}")
    return labels


def _reject(option: str, value: Any, target: str, hint: str) -> None:
    if value is not None:
        raise UsageError(f"{option} does not apply to {target}; {hint}")


def _check_split(build: Any, option: str, value: Optional[int]) -> None:
    """Build the split once, so a bad depth is refused before anything is written, naming the option."""
    try:
        build()
    except TiecError as error:
        rule = str(error).split(" must ", 1)[-1]
        raise UsageError(f"{option} {value}: must {rule}" if " must " in str(error) else f"{option}: {error}") from None


def _check_branch(branch_depth: Optional[int], decoder_start: Optional[int], parallel_decode: bool,
                  dit: Optional[str]) -> None:
    """``--branch-depth``: a UNet split, instead of ``--decoder-start``, decoded step by step.
    ``dit`` names the DiT the run is for (``None``: a UNet)."""
    if branch_depth is None:
        return
    if dit is not None:
        _reject("--branch-depth", branch_depth, dit, "use --encoder-blocks")
    if decoder_start is not None:
        raise UsageError(f"--branch-depth {branch_depth} and --decoder-start {decoder_start} are two UNet splits; "
                         "give one of them")
    if parallel_decode:
        raise UsageError(f"--parallel-decode does not apply with --branch-depth {branch_depth}: the shallow branch "
                         "is recomputed from each step's input, so steps decode one by one")


def _check_steps(scheduler: Any, steps: int) -> None:
    """``--steps`` within the model's training schedule (diffusers' own message is a traceback)."""
    trained = getattr(scheduler.config, "num_train_timesteps", None)
    if trained is not None and steps > trained:
        raise UsageError(f"--steps {steps} is more than the model was trained with ({trained} timesteps); "
                         f"use at most {trained}")
    try:
        scheduler.set_timesteps(steps)
    except (ValueError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"--steps {steps}: the scheduler refuses it ({first})") from None


def is_stochastic(scheduler: Any) -> bool:
    """Whether a scheduler's step draws noise: DDPM, Euler ancestral, SDE solvers (by diffusers'
    own convention: its ``step`` takes a ``generator`` and the sampler is not one of the
    deterministic ones that take it only for an option they leave off)."""
    name = type(scheduler).__name__
    config = getattr(scheduler, "config", {})
    if name in ("DDIMScheduler",):
        return float(getattr(config, "eta", 0.0) or 0.0) > 0
    if name in ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"):
        return "sde" in str(getattr(config, "algorithm_type", ""))
    return name in ("DDPMScheduler", "EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
                    "DPMSolverSDEScheduler", "LCMScheduler", "TCDScheduler")


class DemoJob:
    """Sample a demo model (``dit-digits`` or ``unet-digits``) with tiec's own loop."""

    def __init__(self, name: str, *, class_labels: Optional[str], num_images: int, prompt: Optional[str],
                 negative_prompt: Optional[str], steps: int, scheduler: Optional[str], policy: str,
                 guidance_scale: float, encoder_blocks: Optional[int], decoder_start: Optional[int],
                 parallel_decode: bool, seed: int, device: str, dtype: str, coordinate: str = "auto",
                 branch_depth: Optional[int] = None) -> None:
        from ..demo import load
        from ..demo.data import NUM_CLASSES

        _reject("--prompt", prompt, f"the class-conditional demo model {name!r}", "use --class-labels")
        _reject("--negative-prompt", negative_prompt, f"the demo model {name!r}", "drop it")
        is_dit = name == "dit-digits"
        _reject("--decoder-start" if is_dit else "--encoder-blocks", decoder_start if is_dit else encoder_blocks,
                f"the demo model {name!r}", f"use {'--encoder-blocks' if is_dit else '--decoder-start'}")
        _check_branch(branch_depth, decoder_start, parallel_decode, f"the demo model {name!r}" if is_dit else None)
        given = parse_labels(class_labels, NUM_CLASSES)
        self.labels = given * num_images
        self.model = load(name, device=device, dtype=DTYPES[dtype])
        self.depth = encoder_blocks if is_dit else decoder_start
        self.branch_depth = branch_depth
        if branch_depth is not None:
            _check_split(lambda: self.model.split(branch_depth=branch_depth), "--branch-depth", branch_depth)
        else:
            _check_split(lambda: self.model.split(self.depth), "--encoder-blocks" if is_dit else "--decoder-start",
                         self.depth)
        self.scheduler = self.model.scheduler(scheduler or "ddim")  # for checks; each call builds its own
        _check_steps(self.scheduler, steps)
        self.policy = policy  # a spec, or a configuration's fitted weights (settings record its name)
        self.settings = dict(model=name, class_labels=given, images_per_input=num_images, steps=steps,
                             scheduler=scheduler or "ddim", policy=str(policy), coordinate=coordinate,
                             guidance_scale=guidance_scale, parallel_decode=parallel_decode,
                             seed=seed, device=device, dtype=dtype,
                             **({"encoder_blocks": encoder_blocks} if is_dit else {"decoder_start": decoder_start}),
                             **({"branch_depth": branch_depth} if branch_depth is not None else {}))

    def __len__(self) -> int:
        return len(self.labels)

    @torch.no_grad()
    def __call__(self, keys: Any, indices: list[int], *, progress: Union[bool, str]) -> Images:
        """Images ``indices``; ``progress``: a step bar, labelled when a string."""
        from ..demo.sampling import sample_digits, to_unit

        s = self.settings
        result = sample_digits(self.model, [self.labels[i] for i in indices], steps=s["steps"],
                               scheduler=s["scheduler"], keys=keys, policy=self.policy,
                               guidance_scale=s["guidance_scale"], encoder_blocks=self.depth,
                               branch_depth=self.branch_depth,
                               parallel_decode=s["parallel_decode"], seeds=[s["seed"] + i for i in indices],
                               coordinate=s["coordinate"], progress=progress)
        return Images(to_unit(result.sample).cpu(), tuple(result.key_steps), result.encoder_calls,
                      result.decoder_calls, dict(result.key_errors))


def _read_index(path: Path) -> str:
    index = path / "model_index.json"
    if not index.is_file():
        raise UsageError(f"--model {str(path)!r} is not a diffusers pipeline folder (no model_index.json); "
                         "pass a folder written by save_pretrained, or a demo model name")
    try:
        class_name = json.loads(index.read_text())["_class_name"]
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"--model {str(path)!r}: model_index.json has no '_class_name'; "
                         "is it a diffusers pipeline folder?") from None
    if class_name not in PIPELINES:
        raise UsageError(f"--model {str(path)!r} holds a {class_name}, which tiec generate does not run; "
                         f"supported: {', '.join(PIPELINES)}")
    return class_name


class PipelineJob:
    """Run a diffusers pipeline saved in a local folder, with :func:`tiec.adapters.diffusers.cached`.

    The pipeline class comes from ``model_index.json``; nothing is downloaded
    (``local_files_only=True``).
    """

    def __init__(self, path: Path, *, class_labels: Optional[str], num_images: int, prompt: Optional[str],
                 negative_prompt: Optional[str], steps: int, scheduler: Optional[str], policy: str,
                 guidance_scale: Optional[float], encoder_blocks: Optional[int], decoder_start: Optional[int],
                 parallel_decode: bool, seed: int, device: str, dtype: str, progress: bool = True,
                 coordinate: str = "auto", branch_depth: Optional[int] = None) -> None:
        class_name = _read_index(path)
        kind = PIPELINES[class_name]
        target = f"a {class_name}"
        if kind == "prompt":
            if not prompt:
                raise UsageError(f"--prompt is required for {target}, e.g. --prompt 'a photo of a cat'")
            _reject("--class-labels", class_labels, target, "describe the image with --prompt")
        else:
            _reject("--prompt", prompt, target, "use --class-labels")
            _reject("--negative-prompt", negative_prompt, target, "drop it")
        is_dit = class_name == "DiTPipeline"
        _reject("--decoder-start" if is_dit else "--encoder-blocks", decoder_start if is_dit else encoder_blocks,
                target, f"use {'--encoder-blocks' if is_dit else '--decoder-start'}")
        _check_branch(branch_depth, decoder_start, False, target if is_dit else None)
        _reject("--parallel-decode", True if parallel_decode else None, target,
                "parallel decoding needs tiec's own loop (the demo models)")
        if isinstance(get_policy(policy), Lookahead):
            raise UsageError(f"--policy {policy!r} does not apply to {target}: lookahead predicts latents inside "
                             "tiec's own loop (the demo models); use linear")
        self.pipe = self._load(path, class_name, device, dtype, progress=progress)
        if scheduler is not None:
            from tiec.adapters.diffusers import make_scheduler

            self.pipe.scheduler = make_scheduler(scheduler, self.pipe.scheduler.config)
        _check_steps(self.pipe.scheduler, steps)
        if is_dit and is_stochastic(self.pipe.scheduler):
            raise UsageError(f"--scheduler {scheduler or type(self.pipe.scheduler).__name__}: {class_name} does not "
                             "pass its generators to the scheduler, so a stochastic scheduler would draw other noise "
                             "on every run; use ddim, dpm, euler, heun or unipc")
        from tiec.adapters.diffusers import DiTSplit, UNet2DConditionSplit

        if is_dit:
            _check_split(lambda: DiTSplit(self.pipe.transformer, encoder_blocks=encoder_blocks), "--encoder-blocks",
                         encoder_blocks)
        elif branch_depth is not None:
            _check_split(lambda: UNet2DConditionSplit(self.pipe.unet, branch_depth=branch_depth), "--branch-depth",
                         branch_depth)
        else:
            _check_split(lambda: UNet2DConditionSplit(self.pipe.unet, decoder_start=decoder_start or 0),
                         "--decoder-start", decoder_start)
        self.inputs: dict[str, Any]
        if kind == "prompt":
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            self.count = len(prompts) * num_images
            self.inputs = dict(prompt=prompts[0] if len(prompts) == 1 else prompts)
            if class_name == "IFPipeline":  # IF cleans captions only with bs4 and ftfy; ask for it only then
                from diffusers.utils import is_bs4_available, is_ftfy_available

                self.inputs["clean_caption"] = is_bs4_available() and is_ftfy_available()
            if negative_prompt is not None:
                self.inputs["negative_prompt"] = negative_prompt
        else:
            labels = parse_labels(class_labels or "0", self.pipe.transformer.config.num_embeds_ada_norm)
            self.count = len(labels) * num_images
            self.inputs = dict(class_labels=labels * num_images)
        if guidance_scale is None:
            guidance_scale = inspect.signature(self.pipe.__call__).parameters["guidance_scale"].default
        self.depth = {"encoder_blocks": encoder_blocks} if is_dit else {"decoder_start": decoder_start or 0}
        if branch_depth is not None:
            self.depth = {"branch_depth": branch_depth}
        inputs = {**self.inputs, **({} if kind == "prompt" else {"class_labels": labels})}  # labels as given
        self.policy = policy  # a spec, or a configuration's fitted weights (settings record its name)
        self.settings = dict(model=str(path), pipeline=class_name, **inputs, images_per_input=num_images,
                             steps=steps, scheduler=scheduler or type(self.pipe.scheduler).__name__, policy=str(policy),
                             coordinate=coordinate, guidance_scale=guidance_scale, parallel_decode=False, seed=seed,
                             device=device, dtype=dtype, **self.depth)
        self.device = device

    @staticmethod
    def _load(path: Path, class_name: str, device: str, dtype: str, *, progress: bool) -> Any:
        import diffusers
        import transformers

        libraries = [diffusers.utils.logging, transformers.utils.logging]
        shown = [library.is_progress_bar_enabled() for library in libraries]
        try:
            for library in libraries:
                if not progress:
                    library.disable_progress_bar()
            with warnings.catch_warnings():  # diffusers 0.42 renamed torch_dtype to dtype; older ones know only torch_dtype
                warnings.filterwarnings("ignore", message="`torch_dtype` is deprecated", category=FutureWarning)
                pipe = getattr(diffusers, class_name).from_pretrained(path, local_files_only=True,
                                                                      torch_dtype=DTYPES[dtype])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UsageError(f"--model {str(path)!r}: diffusers could not load the {class_name} ({first})") from None
        finally:
            for library, was_shown in zip(libraries, shown):
                if was_shown:
                    library.enable_progress_bar()
        # diffusers warns, once per fp16 module, that fp16 "will fail" on the CPU; torch runs it (slowly)
        return pipe.to(device, silence_dtype_warnings=True)

    def __len__(self) -> int:
        return self.count

    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    @torch.no_grad()
    def __call__(self, keys: Any, indices: list[int], *, progress: Union[bool, str], steps: Optional[int] = None,
                 **caching: Any) -> Images:
        """Images ``indices``: image ``i`` has label or prompt ``i`` (cycling) and the noise of seed
        ``seed + i``. ``steps`` and ``caching`` (policy, coordinate, split depth) override the job's
        settings for this call (``tiec calibrate`` tries several on one loaded pipeline)."""
        from tiec.adapters.diffusers import cached

        s = self.settings
        generators = [torch.Generator(self.device).manual_seed(s["seed"] + i) for i in indices]
        inputs = dict(self.inputs)
        for name in ("class_labels", "prompt"):
            if isinstance(inputs.get(name), list):
                inputs[name] = [inputs[name][i % len(inputs[name])] for i in indices]
        if isinstance(inputs.get("prompt"), str):
            inputs["num_images_per_prompt"] = len(indices)
        split_keys = ("encoder_blocks", "decoder_start", "branch_depth")
        depth = {} if any(k in caching for k in split_keys) else self.depth  # a call's split replaces the job's
        caching = {"policy": self.policy, "coordinate": s["coordinate"], **depth, **caching}
        self.pipe.set_progress_bar_config(disable=not progress, **({"desc": progress} if isinstance(progress, str)
                                                                    else {}))
        with cached(self.pipe, keys=keys, **caching) as cache:
            out = self.pipe(**inputs, num_inference_steps=steps or s["steps"], guidance_scale=s["guidance_scale"],
                            generator=generators, output_type="np")
            model = cache.model  # with batched guidance, the only stream
            key_steps = model.key_steps or ()
            return Images(torch.from_numpy(out.images).permute(0, 3, 1, 2).float().contiguous(), key_steps,
                          cache.encoder_calls, cache.decoder_calls, dict(model.key_errors))


def make_job(model: str, *, progress: bool = True, **options: Any) -> Any:
    """A :class:`DemoJob` for a demo name, a :class:`PipelineJob` for a folder (``progress``: loading bars)."""
    if model in DEMO_MODELS:
        return DemoJob(model, **options)
    if Path(model).is_dir():
        return PipelineJob(Path(model), progress=progress, **options)
    raise UsageError(f"--model {model!r} is neither a demo model ({', '.join(DEMO_MODELS)}) nor a folder")
