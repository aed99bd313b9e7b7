"""Fused whole models keep their activations channels_last (NHWC) from the first kernel on, with
the reference's outputs: every launch inside gets channels-innermost tensors, whatever the
user's input layout, and ArcFace's fc5 reads the NHWC-flattened map through permuted columns."""

import copy

import pytest
import torch
import torch.nn.functional as F

import fused
import reference as R
from fused import runtime
from fused.arcface import nhwc_columns
from fused.tolerance import assert_close, reduction_length


@pytest.fixture
def launched_maps(monkeypatch):
    """Every 4-D activation tensor (not a weight) passed to a kernel launch, as ``(kernel arg, tensor)``."""
    seen = []
    real = runtime.launch

    def spy(kernel, grid, *args, **kwargs):
        for name, arg in zip(kernel.arg_names, args):
            if isinstance(arg, torch.Tensor) and arg.dim() == 4 and "weight" not in name:
                seen.append((f"{getattr(kernel, 'fn', kernel).__name__}.{name}", arg.shape, arg.stride()))
        return real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(runtime, "launch", spy)
    return seen


def not_channels_last(seen, user_input):
    """The launches whose map is not channels-innermost (a single channel is both layouts), but
    for the user's input itself, which a stem may read as it is (writing NHWC)."""
    given = ("conv2d_bias_act_kernel.x_ptr", user_input.shape, user_input.stride())
    return [(name, tuple(shape), stride) for name, shape, stride in seen
            if stride[1] != 1 and shape[1] != 1 and (name, shape, stride) != given]


@pytest.mark.parametrize("name, size", [("mobile0.25", (40, 56)), ("resnet50", (33, 47))])
def test_retinaface_launches_see_only_channels_last_maps(launched_maps, name, size):
    model = R.randomize_batchnorm(R.retinaface(name, seed=3), seed=4)
    x = torch.randn(1, 3, *size)  # NCHW, as users pass it
    expected = copy.deepcopy(model).double()(x.double())
    model = fused.fuse(model)
    with torch.inference_mode():
        outputs = model(x)
    assert len(launched_maps) > 20
    assert not_channels_last(launched_maps, x) == []
    assert x.is_contiguous()  # the user's tensor is not touched
    for out, exp in zip(outputs, expected):
        assert out.is_contiguous()
        assert_close(out, exp, reduction_length=reduction_length(model))


def test_arcface_launches_see_only_channels_last_maps(launched_maps):
    model = R.randomize_batchnorm(R.arcface(use_se=True, seed=2), seed=3)
    x = torch.randn(2, 1, 128, 128)
    expected = copy.deepcopy(model).double()(x.double())
    model = fused.fuse(model)
    with torch.inference_mode():
        emb = model(x)
    stem_out = next(s for s in launched_maps if s[0] == "conv2d_bias_act_kernel.out_ptr")
    assert stem_out[1][1] == 64 and stem_out[2][1] == 1  # the stem writes NHWC from the [N, 1, H, W] input
    assert not_channels_last(launched_maps, x) == []
    fused.assert_close(emb, expected, reduction_length=512 * 9)


def test_backbones_return_channels_last_maps_with_the_reference_values():
    """FusedResNet50 and FusedIntermediateLayers return feature maps: channels_last, values and
    shapes the reference's (documented); .contiguous() gives NCHW."""
    backbone = R.randomize_batchnorm(R.ResNet50(layers=(1, 1, 1, 1)).eval(), seed=2)
    x = torch.randn(1, 3, 29, 35)
    expected = copy.deepcopy(backbone).double()(x.double())
    model = fused.fuse(backbone)
    with torch.inference_mode():
        out = model(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert_close(out, expected, reduction_length=reduction_length(model))

    body = fused.fuse(R.randomize_batchnorm(R.retinaface(seed=1), seed=2)).body
    assert isinstance(body, fused.FusedIntermediateLayers)
    x = torch.randn(1, 3, 32, 48)
    with torch.inference_mode():
        maps = body(x)
        with fused.enabled(False):
            expected = body(x)
    for got, exp in zip(maps, expected):
        assert got.stride(1) == 1 and got.shape == exp.shape
        assert_close(got, exp.double(), reduction_length=reduction_length(body))


def test_nhwc_columns_only_moves_the_weights():
    w = torch.randn(5, 3 * 2 * 4)
    moved = nhwc_columns(w, channels=3)
    assert torch.equal(moved.sort(dim=1).values, w.sort(dim=1).values)
    for c in range(3):
        for p in range(8):  # p = h * 4 + w
            assert torch.equal(moved[:, p * 3 + c], w[:, c * 8 + p])


def test_arcface_head_reads_the_nhwc_flattened_map_exactly():
    """The folded head on the NHWC-flattened map is the eval-mode head (bn4, flatten, fc5, bn5) on
    the NCHW map; reading the map in NCHW order with the folded weight is wrong (the test can fail)."""
    model = fused.fuse(R.randomize_batchnorm(R.arcface(seed=4), seed=6))
    ref = copy.deepcopy(model).double()
    m = torch.randn(3, 512, 8, 8)
    with torch.no_grad():
        expected = ref.bn5(ref.fc5(ref.bn4(m.double()).reshape(3, -1)))
        weight, bias = model.folded(torch.float32, m.device)["head"]
        map_nhwc = m.contiguous(memory_format=torch.channels_last)
        flat = map_nhwc.permute(0, 2, 3, 1).flatten(1)
        assert flat.data_ptr() == map_nhwc.data_ptr() and flat.is_contiguous()  # a view: no copy
        assert_close(F.linear(flat, weight, bias), expected, reduction_length=512 * 64)
        wrong = F.linear(m.flatten(1), weight, bias)
        with pytest.raises(AssertionError):
            assert_close(wrong, expected, reduction_length=512 * 64)
