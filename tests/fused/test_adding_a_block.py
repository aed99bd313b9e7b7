"""docs/adding-a-block.md works: a block added as it says (tests/fused/example_block.py) is
recognised, fused, flagged, reported, traced by torch.compile(fullgraph=True) and passes opcheck,
with no list edited anywhere."""

import copy
import importlib

import pytest
import torch
from torch import nn

import fused
import reference as R


@pytest.fixture(scope="module")
def example():
    """The example block's module, imported (which registers ``"BNAct"``) with the registry restored after."""
    saved = dict(fused.REGISTRY)
    try:
        yield importlib.import_module("tests.fused.example_block")
    finally:
        fused.REGISTRY.clear()
        fused.REGISTRY.update(saved)


def model_with(example, act):
    """conv_bn → BNAct(act): the new block inside a model, BatchNorms randomised."""
    model = nn.Sequential(R.conv_bn(3, 8, 1, 0.1), example.BNAct(8, act))
    return R.randomize_batchnorm(model.eval(), seed=9)


def planted(x):
    x = x.clone()
    x[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    return x


@pytest.mark.parametrize("act", [nn.ReLU6(), nn.ReLU(), nn.LeakyReLU(0.2)], ids=["relu6", "relu", "leaky"])
def test_the_new_block_fuses_and_equals_the_reference(example, act):
    model = model_with(example, act)
    assert R.block_type(model[1]) == "BNAct" and "BNAct" in fused.flag.known_block_types()
    x = planted(torch.randn(2, 3, 6, 5) * 4)
    with torch.inference_mode():
        expected = copy.deepcopy(model).double()(x.double())
    model = fused.fuse(model)
    assert type(model[1]) is example.FusedBNAct and model.fuse_report.counts() == {"conv_bn": 1, "BNAct": 1}
    with torch.inference_mode(), fused.recording() as rec:
        out = model(x)
    assert rec.blocks() == {"0": ["conv2d_bias_act"], "1": ["bn_act"]} and not rec.fallbacks()
    fused.assert_close(out, expected, reduction_length=27)
    with torch.inference_mode(), fused.enabled(False, block_types={"BNAct"}), fused.recording() as rec:
        model(x)
    assert rec.fallbacks() == [("1", "fused path disabled by the flag for BNAct blocks")]


def test_the_new_block_refuses_what_its_kernel_cannot_do(example):
    model = fused.fuse(model_with(example, nn.PReLU()))
    assert type(model[1]) is example.BNAct
    assert "PReLU activation" in str(model.fuse_report)


def test_the_new_block_traces_under_torch_compile(example):
    model = fused.fuse(model_with(example, nn.ReLU6()))
    x = torch.randn(2, 3, 6, 5)
    with torch.inference_mode():
        eager = model(x)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        with fused.recording() as rec:
            out = compiled(x)
    assert {"conv2d_bias_act", "bn_act"} <= rec.kernels()  # the operators' bodies launched
    assert torch.equal(out, eager)


def test_the_new_operator_passes_opcheck(example):
    x = torch.randn(2, 8, 5, 3)
    scale, shift = torch.rand(8) + 0.5, torch.randn(8)
    torch.library.opcheck(example.BN_ACT_OP, (x, scale, shift, "relu6", 0.0))
    torch.library.opcheck(example.BN_ACT_OP, (x.contiguous(memory_format=torch.channels_last), scale, shift,
                                              "leaky_relu", 0.1))
    assert "bn_act" not in fused.kernels.ops.OPS  # another namespace: the package's list is the package's


def test_the_new_block_follows_autocast(example):
    """What every fused module gets from FusedModule without a line of its own."""
    model = fused.fuse(model_with(example, nn.ReLU6()))
    x = torch.randn(2, 3, 6, 5)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        with fused.enabled(False):
            expected = model(x)
        with fused.recording() as rec:
            out = model(x)
    assert out.dtype == expected.dtype == torch.bfloat16 and ("1", "bfloat16") in rec.autocasts()
