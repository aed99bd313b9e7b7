"""The fused path under ``torch.autocast``: every fused block type returns the dtype its reference
returns under the same autocast, with values within the tolerance policy, and the record says
which path ran and in which dtype."""

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

import fused
import reference as R
from fused.tolerance import reduction_length
from reference.retinaface import IntermediateLayers

AUTOCAST = torch.bfloat16


def small_body():
    """A RetinaFace ``body`` with a loose 7x7 stem (as ResNet-50's), small enough for the interpreter."""
    backbone = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False), bn1=nn.BatchNorm2d(8), relu=nn.ReLU(),
        maxpool=nn.MaxPool2d(3, 2, 1), layer1=R.conv_bn(8, 8, 1, 0.1)))
    return IntermediateLayers(backbone, ("maxpool", "layer1"))


def downsample(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


#: block type -> (block builder, input builder): one case per block type the package fuses.
BLOCKS = {
    "conv_bn": (lambda: R.conv_bn(4, 8, 1, 0.1), lambda: torch.randn(2, 4, 7, 6)),
    "conv_bn_no_relu": (lambda: R.conv_bn_no_relu(4, 8, 2), lambda: torch.randn(2, 4, 7, 6)),
    "conv_bn1X1": (lambda: R.conv_bn1X1(4, 8, 1), lambda: torch.randn(2, 4, 7, 6)),
    "conv_bn_pair": (lambda: downsample(4, 8, 2), lambda: torch.randn(2, 4, 7, 6)),
    "conv_dw": (lambda: R.conv_dw(8, 16, 2), lambda: torch.randn(2, 8, 7, 6)),
    "SEBlock": (lambda: R.SEBlock(32), lambda: torch.randn(2, 32, 4, 3)),
    "IRBlock": (lambda: R.IRBlock(8, 8, use_se=False), lambda: torch.randn(2, 8, 6, 5)),
    "BasicBlock": (lambda: R.BasicBlock(8, 16, 2, downsample(8, 16, 2)), lambda: torch.randn(2, 8, 6, 5)),
    "Bottleneck": (lambda: R.Bottleneck(16, 4), lambda: torch.randn(2, 16, 6, 5)),
    "SSH": (lambda: R.SSH(8, 8), lambda: torch.randn(2, 8, 6, 5)),
    "FPN": (lambda: R.FPN([4, 8, 16], 8),
            lambda: [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]),
    "ClassHead": (lambda: R.ClassHead(8, 2), lambda: torch.randn(2, 8, 4, 3)),
    "BboxHead": (lambda: R.BboxHead(8, 2), lambda: torch.randn(2, 8, 4, 3)),
    "LandmarkHead": (lambda: R.LandmarkHead(8, 2), lambda: torch.randn(2, 8, 4, 3)),
    "IntermediateLayers": (small_body, lambda: torch.randn(2, 3, 16, 16)),
    "ResNet50": (lambda: R.ResNet50(layers=(1, 1, 1, 1)), lambda: torch.randn(1, 3, 32, 32)),
    "RetinaFace": (lambda: R.RetinaFace(), lambda: torch.randn(1, 3, 32, 32)),
    "ResNetArcFace": (lambda: R.ResNetArcFace("IRBlock", (1, 1, 1, 1), use_se=False), lambda: torch.randn(1, 1, 128, 128)),
}
#: Blocks tested with their squeeze-excite or downsample variant too.
VARIANTS = {
    "IRBlock-se-downsample": (lambda: R.IRBlock(16, 32, 2, downsample(16, 32, 2), use_se=True),
                              lambda: torch.randn(2, 16, 6, 5)),
    "IRBlock-se": (lambda: R.IRBlock(32, 32, use_se=True), lambda: torch.randn(2, 32, 5, 5)),
}


def flat(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def test_every_block_type_of_the_package_is_covered():
    ours = {t for t, cls in fused.REGISTRY.items() if cls.__module__.startswith("fused.")}
    assert ours <= set(BLOCKS), sorted(ours - set(BLOCKS))


@pytest.mark.parametrize("name", [*BLOCKS, *VARIANTS])
def test_fused_block_follows_autocast(name):
    build, make_input = {**BLOCKS, **VARIANTS}[name]
    torch.manual_seed(0)
    block = R.randomize_batchnorm(build().eval(), seed=7)
    x = make_input()
    with torch.inference_mode():
        exact = flat(copy.deepcopy(block).double()(*[[t.double() for t in x]] if isinstance(x, list) else [x.double()]))
    f = fused.fuse(copy.deepcopy(block))
    assert isinstance(f, fused.FusedModule)
    with torch.inference_mode(), torch.autocast("cpu", AUTOCAST):
        expected = flat(block(x))
        with fused.recording() as rec:
            out = flat(f(x))
    assert rec.kernels() and not rec.fallbacks(), rec.summary()
    autocasts = dict(rec.autocasts())
    keeps_dtype = isinstance(f, fused.FusedSEBlock)
    assert autocasts[f.facefuse_path] == (None if keeps_dtype else "bfloat16"), rec.summary()
    length = reduction_length(block)
    for got, want, ref64 in zip(out, expected, exact):
        assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
        # both within the policy's bound for the autocast dtype of the float64 result
        fused.assert_close(got, ref64, dtype=AUTOCAST, reduction_length=length, what="fused under autocast")
        fused.assert_close(want, ref64, dtype=AUTOCAST, reduction_length=length, what="reference under autocast")


def test_autocast_float16_input_is_cast_to_the_autocast_dtype():
    """Autocast casts every floating input but float64 (a float16 one included) for a conv."""
    block = R.randomize_batchnorm(R.conv_bn(4, 8).eval())
    x = torch.randn(1, 4, 5, 5).half()
    f = fused.fuse(copy.deepcopy(block))
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        assert f(x).dtype == block(x).dtype == torch.bfloat16


def test_folds_are_computed_without_autocast():
    """A fold made under autocast is cached and reused outside it: it must not carry autocast's
    rounding (ArcFace's head fold has a matrix product, which autocast would run in bfloat16)."""
    model = fused.fuse(R.randomize_batchnorm(R.ResNetArcFace("IRBlock", (1, 1, 1, 1), use_se=False).eval()))
    plain = model.folded(torch.float32, torch.device("cpu"))
    fused.refresh(model)
    with torch.autocast("cpu", torch.bfloat16):
        under_autocast = model.folded(torch.float32, torch.device("cpu"))
    assert under_autocast["head"][1].dtype == torch.float32
    assert torch.equal(under_autocast["head"][1], plain["head"][1])
    assert torch.equal(under_autocast["head"][0], plain["head"][0])


def test_no_autocast_no_autocast_record():
    f = fused.fuse(R.randomize_batchnorm(R.conv_bn(4, 8).eval()))
    with torch.inference_mode(), fused.recording() as rec:
        assert f(torch.randn(1, 4, 5, 5)).dtype == torch.float32
    assert rec.autocasts() == [] and rec.kernels() == {"conv2d_bias_act"}


def test_autocast_under_torch_compile():
    """Compiled (fullgraph), the fused path follows autocast as in eager mode."""
    block = R.randomize_batchnorm(R.conv_bn(4, 8, 1, 0.1).eval())
    f = fused.fuse(copy.deepcopy(block))
    x = torch.randn(2, 4, 5, 5)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        expected = block(x)
        eager = f(x)
        torch._dynamo.reset()
        with fused.recording() as rec:
            out = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    assert out.dtype == eager.dtype == expected.dtype == torch.bfloat16
    assert rec.kernels() == {"conv2d_bias_act"}
    assert torch.equal(out, eager)
