import pytest
import torch

from helpers import assert_close
from tiec import weighted_sum
from tiec.blend import check_features

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_and_device_are_preserved(dtype):
    a = (torch.randn(2, 3).to(dtype), torch.randn(2, 4, 5).to(dtype))
    b = (torch.randn(2, 3).to(dtype), torch.randn(2, 4, 5).to(dtype))
    out = weighted_sum([a, b], [-0.5, 1.5])
    for o, x, y in zip(out, a, b):
        assert o.dtype == dtype and o.device == x.device and o.shape == x.shape
        accumulation = torch.float64 if dtype == torch.float64 else torch.float32
        expected = (-0.5 * x.to(accumulation) + 1.5 * y.to(accumulation)).to(dtype)
        assert_close(o, expected)


def test_half_precision_is_accumulated_in_float32():
    # 1024 + 0.5 + 0.5: in fp16 (spacing 1 at 1024) each half rounds away, in fp32 they add up.
    big = (torch.tensor([[2048.0]], dtype=torch.float16),)
    two = (torch.tensor([[2.0]], dtype=torch.float16),)
    out = weighted_sum([big, two, two], [0.5, 0.25, 0.25])[0]
    naive = big[0] * 0.5 + two[0] * 0.25 + two[0] * 0.25
    assert naive.item() == 1024.0
    assert out.item() == 1025.0
    # An intermediate 2 * 60000 overflows fp16 but not the fp32 accumulator.
    tiny = (torch.tensor([[1e-4]], dtype=torch.float16),)
    huge = (torch.tensor([[60000.0]], dtype=torch.float16),)
    out = weighted_sum([huge, huge, tiny], [2.0, -2.0, 1.0])[0]
    assert_close(out, tiny[0])


def test_one_hot_weights_return_the_stored_tensors_themselves():
    a, b = (torch.randn(1, 2),), (torch.randn(1, 2),)
    assert weighted_sum([a, b], [0.0, 1.0]) is b


def test_zero_weights_are_skipped_and_shapes_checked():
    a, b, c = (torch.ones(1, 2),), (torch.full((1, 2), 2.0),), (torch.full((1, 2), 4.0),)
    assert_close(weighted_sum([a, b, c], [0.0, 0.5, 0.5])[0], torch.full((1, 2), 3.0))


def test_errors():
    a = (torch.ones(1, 2),)
    with pytest.raises(ValueError, match="one entry per feature tuple: 1 weights for 2 tuples"):
        weighted_sum([a, a], [1.0])
    with pytest.raises(ValueError, match="must not all be zero"):
        weighted_sum([a, a], [0.0, 0.0])
    with pytest.raises(TypeError, match="must be a tuple of tensors, got list"):
        check_features([torch.ones(1)])
    with pytest.raises(ValueError, match="empty tuple"):
        check_features(())
    with pytest.raises(TypeError, match=r"features\[1\] must be a torch.Tensor, got int"):
        check_features((torch.ones(1), 3))
    with pytest.raises(TypeError, match=r"floating-point tensor .* got dtype torch.int64"):
        check_features((torch.ones(1, dtype=torch.int64),))
    with pytest.raises(ValueError, match="0-d tensor"):
        check_features((torch.tensor(1.0),))
