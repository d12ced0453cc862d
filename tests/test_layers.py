"""The primitive ops reproduce the TF computations they stand for."""

import math

import pytest
import torch
import torch.nn.functional as F

from ghfeat_hf.layers import (
    GHFeatSameConv2d,
    GHFeatSameMaxPool2d,
    StyleGANEqualizedConv2d,
    StyleGANEqualizedLinear,
    adain,
    blur,
    instance_norm,
    minibatch_stddev,
    pixel_norm,
    tf_same_padding,
)


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [
        (256, 7, 2, (2, 3)),  # stem: asymmetric, more at the bottom/right
        (128, 3, 2, (0, 1)),  # max pool and stride-2 3x3 convs on even inputs
        (64, 3, 2, (0, 1)),
        (65, 3, 2, (1, 1)),  # odd input: symmetric
        (64, 1, 2, (0, 0)),  # 1x1 stride-2 shortcut samples even pixels
        (16, 3, 1, (1, 1)),
        (16, 1, 1, (0, 0)),
    ],
)
def test_tf_same_padding(size, kernel, stride, expected):
    assert tf_same_padding(size, kernel, stride) == expected


def test_same_conv_stride2_matches_explicit_asymmetric_padding():
    conv = GHFeatSameConv2d(2, 3, 3, stride=2)
    x = torch.randn(1, 2, 8, 8)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape == (1, 3, 4, 4)


def test_same_max_pool_hand_computed():
    x = torch.arange(16.0).view(1, 1, 4, 4) - 100.0  # all negative: zero padding would win, -inf must not
    out = GHFeatSameMaxPool2d(3, 2)(x)
    # windows rows/cols {0,1,2} and {2,3,pad}
    expected = torch.tensor([[[[10.0, 11.0], [14.0, 15.0]]]]) - 100.0
    torch.testing.assert_close(out, expected)


def test_fused_upconv_equals_nearest_upsampling_then_rotated_kernel():
    conv = StyleGANEqualizedConv2d(3, 4, 3, bias=False, resample="up", fused=True)
    x = torch.randn(2, 3, 5, 5)
    weight = conv.weight * conv.weight_gain
    expected = F.conv2d(F.interpolate(x, scale_factor=2.0), weight.flip(2, 3), padding=1)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    # and differs from the non-fused path with the same kernel (the >= 128 px threshold matters)
    plain = StyleGANEqualizedConv2d(3, 4, 3, bias=False, resample="up", fused=False)
    plain.weight.data.copy_(conv.weight.data)
    assert (plain(x) - conv(x)).abs().max() > 1e-3


def test_fused_downconv_equals_conv_then_average_pool():
    fused = StyleGANEqualizedConv2d(3, 4, 3, resample="down", fused=True)
    plain = StyleGANEqualizedConv2d(3, 4, 3, resample="down", fused=False)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fused(x), plain(x), rtol=1e-5, atol=1e-5)


def test_equalized_linear_runtime_scale_and_lr_multiplier():
    layer = StyleGANEqualizedLinear(512, 4, lr_multiplier=0.01)
    x = torch.randn(3, 512)
    expected = x @ (layer.weight * math.sqrt(2) / math.sqrt(512) * 0.01).T + layer.bias * 0.01
    torch.testing.assert_close(layer(x), expected)
    assert layer.weight.std().item() == pytest.approx(100.0, rel=0.1)  # N(0, 1 / lr_mul) init


def test_equalized_conv_fan_in_includes_kernel():
    conv = StyleGANEqualizedConv2d(3, 8, 1)  # D's FromRGB: sqrt(2) / sqrt(3)
    assert conv.weight_gain == pytest.approx(math.sqrt(2) / math.sqrt(3))


def test_blur_kernel_and_padding():
    x = torch.zeros(1, 2, 5, 5)
    x[0, 1, 2, 2] = 16.0
    out = blur(x)
    expected = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])
    torch.testing.assert_close(out[0, 1, 1:4, 1:4], expected)
    assert out[0, 0].abs().max() == 0 and out.sum() == 16.0


def test_norms_and_adain():
    x = torch.randn(2, 3, 4, 4) * 5 + 2
    y = instance_norm(x)
    torch.testing.assert_close(y.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.square().mean(dim=(2, 3)), torch.ones(2, 3), atol=1e-4, rtol=0)
    z = torch.randn(4, 7)
    torch.testing.assert_close(pixel_norm(z).square().mean(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    style = torch.randn(2, 6)
    expected = x * (style[:, :3, None, None] + 1) + style[:, 3:, None, None]
    torch.testing.assert_close(adain(x, style), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_norms_in_half_precision_are_finite_and_keep_the_dtype(dtype):
    constant = torch.full((2, 3, 4, 4), 0.5, dtype=dtype)  # in fp16, eps 1e-8 underflows: 0 * rsqrt(0) = NaN
    assert instance_norm(constant).dtype == dtype and torch.equal(instance_norm(constant), torch.zeros_like(constant))
    zeros = torch.zeros(4, 7, dtype=dtype)
    assert pixel_norm(zeros).dtype == dtype and torch.equal(pixel_norm(zeros), zeros)
    x = torch.randn(2, 3, 4, 4) * 300  # x**2 overflows fp16
    torch.testing.assert_close(instance_norm(x.to(dtype)).float(), instance_norm(x), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(pixel_norm(x.to(dtype)).float(), pixel_norm(x), atol=2e-2, rtol=2e-2)


def test_norms_in_float32_follow_the_official_formula_exactly():
    x = torch.randn(2, 3, 4, 4) * 5 + 2
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    assert torch.equal(instance_norm(x), centred * torch.rsqrt(centred.square().mean(dim=(2, 3), keepdim=True) + 1e-8))
    assert torch.equal(pixel_norm(x), x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8))


def test_minibatch_stddev_groups_with_stride():
    x = torch.randn(8, 3, 2, 2)
    out = minibatch_stddev(x, group_size=4)
    assert out.shape == (8, 4, 2, 2)
    torch.testing.assert_close(out[:, :3], x)
    for member in range(8):
        group = x[member % 2 :: 2]  # sample i belongs to group i mod (N / G)
        expected = torch.sqrt(group.var(dim=0, unbiased=False) + 1e-8).mean()
        torch.testing.assert_close(out[member, 3], torch.full((2, 2), expected.item()))
    with pytest.raises(ValueError, match="divisible"):
        minibatch_stddev(torch.randn(6, 3, 2, 2), group_size=4)
