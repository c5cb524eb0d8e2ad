import pickle

import pytest
import torch
from diffusers import DiTTransformer2DModel
from tiec.adapters.diffusers import DiTSplit
from tiec.adapters.reference_dit import (
    DIT_CONFIGS,
    DiTConfig,
    ReferenceDiT,
    ReferenceDiTSplit,
    load_reference_dit,
)

TINY = DiTConfig(input_size=8, hidden_size=32, depth=3, num_heads=2, num_classes=10)


@pytest.fixture(scope="module")
def diffusers_dit():
    torch.manual_seed(0)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                 num_layers=3, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()


@pytest.fixture(scope="module")
def reference_dit():
    torch.manual_seed(0)
    return ReferenceDiT(TINY).eval()


@torch.no_grad()
@pytest.mark.parametrize("timestep", [torch.tensor([601, 601]), torch.tensor([601.5, 12.0])], ids=["int", "float"])
def test_diffusers_dit_split_reproduces_forward_at_every_depth(diffusers_dit, timestep):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([3, 10])  # 10: the null class of class dropout
    expected = diffusers_dit(x, timestep, class_labels=labels).sample
    assert expected.shape[1] == 8  # learned sigma: 2x the input channels
    for k in range(1, 4):
        split = DiTSplit(diffusers_dit, encoder_blocks=k)
        kept = x.clone()
        features = split.encode(x, timestep, class_labels=labels)
        cached = features[0].clone()
        assert torch.equal(split.decode(features, timestep, class_labels=labels), expected), k
        assert torch.equal(x, kept) and torch.equal(features[0], cached)


@torch.no_grad()
def test_reference_dit_split_reproduces_forward_at_every_depth(reference_dit):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t, y = torch.tensor([999, 3]), torch.tensor([1, reference_dit.null_label])
    expected = reference_dit(x, t, y)
    for k in range(1, TINY.depth + 1):
        split = ReferenceDiTSplit(reference_dit, encoder_blocks=k)
        assert torch.equal(split.decode(split.encode(x, t, y=y), t, y=y), expected), k


def test_split_depth_is_validated(diffusers_dit, reference_dit):
    with pytest.raises(ValueError, match=r"encoder_blocks must be an int in \[1, 3\] .* got 0"):
        DiTSplit(diffusers_dit, encoder_blocks=0)
    with pytest.raises(ValueError, match=r"encoder_blocks must be an int in \[1, 3\] .* got 4"):
        ReferenceDiTSplit(reference_dit, encoder_blocks=4)
    with pytest.raises(TypeError, match="transformer must be a diffusers DiTTransformer2DModel, got ReferenceDiT"):
        DiTSplit(reference_dit)
    assert repr(DiTSplit(diffusers_dit)) == "DiTSplit(encoder_blocks=1 of 3)"


def test_state_dict_keys_match_the_official_layout(reference_dit):
    keys = set(reference_dit.state_dict())
    expected = {"pos_embed", "x_embedder.proj.weight", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.bias",
                "y_embedder.embedding_table.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.bias",
                "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.bias", "blocks.2.adaLN_modulation.1.weight",
                "final_layer.linear.weight", "final_layer.adaLN_modulation.1.bias"}
    assert expected <= keys
    assert not any("norm" in k for k in keys)  # the LayerNorms have no affine parameters
    assert reference_dit.y_embedder.embedding_table.weight.shape[0] == 11  # + the null label


def test_checkpoint_round_trip_with_weights_only(tmp_path, reference_dit):
    path = tmp_path / "dit.pt"
    torch.save(reference_dit.state_dict(), path)
    loaded = load_reference_dit(path, TINY)
    for key, value in reference_dit.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert loaded.checkpoint_weights == "state dict"
    torch.save({"model": reference_dit.state_dict(), "opt": {}}, tmp_path / "train.pt")
    assert torch.equal(load_reference_dit(tmp_path / "train.pt", TINY).pos_embed, reference_dit.pos_embed)


def test_a_training_checkpoint_gives_its_ema_weights_as_the_official_sampler(tmp_path, reference_dit):
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in reference_dit.state_dict().items()}
    torch.save({"model": reference_dit.state_dict(), "ema": ema, "opt": {}, "args": None}, tmp_path / "train.pt")
    loaded = load_reference_dit(tmp_path / "train.pt", TINY)
    assert loaded.checkpoint_weights == "ema"
    assert torch.equal(loaded.final_layer.linear.weight, ema["final_layer.linear.weight"])


def test_safetensors_round_trip(tmp_path, reference_dit):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in reference_dit.state_dict().items()}, tmp_path / "dit.safetensors")
    loaded = load_reference_dit(tmp_path / "dit.safetensors", "DiT-S/2", input_size=8, hidden_size=32,
                                depth=3, num_heads=2, num_classes=10)
    assert torch.equal(loaded.final_layer.linear.weight, reference_dit.final_layer.linear.weight)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never be printed",))


def test_a_pickle_carrying_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Payload()}, f, protocol=2)  # torch.save's protocol
    with pytest.raises(ValueError, match=r"refusing to load .*evil.pt: .*Unsupported global: GLOBAL print was not an allowed global"
                                         r".*it is not a plain state dict") as error:
        load_reference_dit(path, TINY)
    assert "\x1b" not in str(error.value) and "\n" not in str(error.value)
    assert "never be printed" not in capsys.readouterr().out


@pytest.mark.parametrize("config, message", [
    (DiTConfig(input_size=8, hidden_size=32, depth=4, num_heads=2, num_classes=10), "its depth 3 (config: 4)"),
    (DiTConfig(input_size=8, hidden_size=64, depth=3, num_heads=2, num_classes=10), "hidden_size 32 (config: 64)"),
    (DiTConfig(input_size=8, hidden_size=32, depth=3, num_heads=2, num_classes=10, patch_size=4),
     "patch_size 2 (config: 4)"),
    (DiTConfig(input_size=8, hidden_size=32, depth=3, num_heads=2, num_classes=10, learn_sigma=False),
     "learn_sigma True (config: False)"),
    (DiTConfig(input_size=16, hidden_size=32, depth=3, num_heads=2, num_classes=10), "input_size 8 (config: 16)"),
    (DiTConfig(input_size=8, hidden_size=32, depth=3, num_heads=2, num_classes=100), "size mismatch for "
                                                                                      "y_embedder.embedding_table"),
])
def test_a_checkpoint_that_does_not_fit_is_one_line_naming_what_differs(tmp_path, reference_dit, config, message):
    torch.save(reference_dit.state_dict(), tmp_path / "dit.pt")
    with pytest.raises(ValueError, match="does not fit the config: ") as error:
        load_reference_dit(tmp_path / "dit.pt", config)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_checkpoint_of_another_official_size_is_named(tmp_path):
    small = ReferenceDiT(DIT_CONFIGS["DiT-S/8"])
    torch.save(small.state_dict(), tmp_path / "s8.pt")
    with pytest.raises(ValueError, match=r"does not fit DiT-XL/2: its depth 12 \(config: 28\), hidden_size 384 "
                                         r"\(config: 1152\), patch_size 8 \(config: 2\); it looks like DiT-S/8"):
        load_reference_dit(tmp_path / "s8.pt", "DiT-XL/2")
    assert load_reference_dit(tmp_path / "s8.pt", "DiT-S/8").patch_size == 8


def test_missing_files_and_foreign_state_dicts(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint '.*nothing.pt' does not exist"):
        load_reference_dit(tmp_path / "nothing.pt", TINY)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"does not fit the config: \d+ missing \(first: .*\), 1 unexpected "
                                         r"\(first: weight\) parameters"):
        load_reference_dit(tmp_path / "other.pt", TINY)


def test_every_official_size_is_known():
    assert sorted(DIT_CONFIGS) == sorted(f"DiT-{s}/{p}" for s in ("XL", "L", "B", "S") for p in (2, 4, 8))


def test_unknown_config_name():
    with pytest.raises(ValueError, match="config 'DiT-XXL/2' is unknown"):
        load_reference_dit("x.pt", "DiT-XXL/2")
