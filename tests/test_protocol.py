import subprocess
import sys

import pytest
import torch

from tiec import ClassifierFreeGuidance, Split, decode_batch
from tiec.protocol import repeat_batch
from toy import CountingSplit, make_toy


def test_toy_and_guidance_wrapper_satisfy_the_protocol():
    model = make_toy()
    assert isinstance(model, Split)
    assert isinstance(ClassifierFreeGuidance(model, 2.0, {}), Split)
    assert not isinstance(object(), Split)


@torch.no_grad()
def test_decode_batch_equals_one_decode_per_step():
    model = make_toy(num_classes=4)
    labels = torch.tensor([0, 3])
    xs = [torch.randn(2, 2, 8, 8) for _ in range(3)]
    times = [torch.tensor(900), torch.tensor(500), torch.tensor(100)]
    feats = [model.encode(x, t, class_labels=labels) for x, t in zip(xs, times)]
    split = CountingSplit(model)
    outputs = decode_batch(split, feats, times, {"class_labels": labels})
    assert split.decode_calls == 1 and split.decode_batches == [6]
    for out, f, t in zip(outputs, feats, times):
        torch.testing.assert_close(out, model.decode(f, t, class_labels=labels), rtol=1e-5, atol=1e-6)
    assert decode_batch(split, [], [], {}) == []
    with pytest.raises(ValueError, match="one entry per feature tuple: 2 times for 3 tuples"):
        decode_batch(split, feats, times[:2], {})


def test_repeat_batch_walks_nested_conditioning():
    cond = {"added": {"time_ids": torch.ones(2, 6)}, "mask": [torch.zeros(2)], "shared": torch.ones(1, 3), "s": "x"}
    out = repeat_batch(cond, batch=2, repeats=3)
    assert out["added"]["time_ids"].shape == (6, 6)
    assert out["mask"][0].shape == (6,)
    assert out["shared"].shape == (1, 3) and out["s"] == "x"


@torch.no_grad()
def test_guidance_wrapper_combines_like_diffusers():
    model = make_toy(num_classes=4)
    x, t = torch.randn(2, 2, 8, 8), torch.tensor(400)
    labels, null = torch.tensor([1, 2]), torch.tensor([4, 4])
    guided = ClassifierFreeGuidance(model, 5.0, {"class_labels": null[:1]})
    out = guided.decode(guided.encode(x, t, class_labels=labels), t, class_labels=labels)
    u, c = model(torch.cat([x, x]), t, class_labels=torch.cat([null, labels])).chunk(2)
    assert torch.equal(out, u + 5.0 * (c - u))


@torch.no_grad()
def test_guided_channels_keep_the_conditional_rest():
    class Split:
        def encode(self, x, t, *, y):
            return (x + y[:, None, None],)

        def decode(self, features, t, *, y):
            return torch.cat([features[0], features[0] * 10], dim=1)

    guided = ClassifierFreeGuidance(Split(), 2.0, {"y": torch.zeros(1)}, guided_channels=1)
    out = guided.decode(guided.encode(torch.zeros(1, 1, 2), 0, y=torch.ones(1)), 0, y=torch.ones(1))
    assert out[:, 0].eq(2.0).all() and out[:, 1].eq(10.0).all()


def test_guidance_errors():
    model = make_toy(num_classes=4)
    with pytest.raises(TypeError, match="scale must be a number, got str"):
        ClassifierFreeGuidance(model, "7")
    guided = ClassifierFreeGuidance(model, 2.0, {"class_labels": torch.tensor([4])})
    with pytest.raises(ValueError, match=r"uncond has keywords \['class_labels'\] that the call's cond lacks"):
        guided.encode(torch.zeros(1, 2, 8, 8), 1)
    bad = ClassifierFreeGuidance(model, 2.0, {"class_labels": torch.tensor([[4]])})
    with pytest.raises(ValueError, match=r"uncond\['class_labels'\] must match cond's shape"):
        bad.encode(torch.zeros(1, 2, 8, 8), 1, class_labels=torch.tensor([1]))
    assert "scale=2.0" in repr(guided)


def test_import_tiec_needs_torch_only():
    code = (
        "import sys, tiec, tiec.adapters; "
        "heavy = [m for m in ('diffusers', 'timm', 'k_diffusion', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy; print(tiec.adapters.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "tiec.adapters"


def test_a_missing_framework_names_the_extra():
    from tiec import MissingDependencyError
    from tiec.adapters._lazy import require

    with pytest.raises(MissingDependencyError, match=r"pip install 'tiec\[k-diffusion\]'") as info:
        require("no_such_framework_tiec_test", "k-diffusion")
    assert isinstance(info.value, ImportError)
