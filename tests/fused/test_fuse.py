"""fuse(), the flag, the record, BN folding and fallbacks, on the conv+BN+activation family."""

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fused
import reference as R
from fused.tolerance import reduction_length
from fused.conv_bn_act import FusedConvBNAct

CONV_BN_FAMILY = {"conv_bn", "conv_bn_no_relu", "conv_bn1X1", "conv_bn_pair"}


#: Blocks whose fused module runs all their conv-BN layers itself.
OWNS_ITS_CONVS = {"IRBlock", "BasicBlock", "Bottleneck", "SSH"}


def conv_bn_paths(model):
    """Paths of conv-BN blocks fused on their own: not inside a block that runs its convs itself,
    and not an FPN lateral (those run in the FPN's upsample-add kernel)."""
    inside = [name for name, m in model.named_modules() if R.block_type(m) in OWNS_ITS_CONVS]
    return [
        name for name, m in model.named_modules()
        if R.block_type(m) in CONV_BN_FAMILY and not any(name.startswith(p + ".") for p in inside)
        and not (name.startswith("fpn.output"))
    ]


def float64_reference(model, x):
    with fused.enabled(False), torch.inference_mode():
        return copy.deepcopy(model).double()(x.double())


@pytest.fixture(params=["mobile0.25", "resnet50"])
def detector(request):
    return R.randomize_batchnorm(R.retinaface(request.param, seed=1), seed=2)


def test_fuse_swaps_every_conv_bn_block_and_keeps_the_state_dict(detector):
    paths = conv_bn_paths(detector)
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    model = fused.fuse(detector)
    assert model is detector
    swapped = {s.path: s.block_type for s in model.fuse_report.swapped}
    assert {p for p, kind in swapped.items() if kind in CONV_BN_FAMILY} == set(paths)
    for path in paths:
        assert isinstance(model.get_submodule(path), FusedConvBNAct), path
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fused_retinaface_equals_the_reference_and_the_kernel_ran(detector):
    x = torch.randn(2, 3, 40, 56)
    expected = float64_reference(detector, x)
    paths = conv_bn_paths(detector)
    model = fused.fuse(detector)
    with torch.inference_mode(), fused.recording() as rec:
        outputs = model(x)
    for out, exp, name in zip(outputs, expected, ("boxes", "scores", "landmarks")):
        fused.assert_close(out, exp, reduction_length=reduction_length(model), what=name)
    assert rec.fallbacks() == []
    blocks = rec.blocks()
    assert all(blocks[p] == ["conv2d_bias_act"] for p in paths)  # every conv-BN block ran its kernel, once
    # The model itself runs the three heads of each level as one kernel; the head modules are
    # fused too (for use on their own) but the fused model does not call them.
    assert blocks.pop(None) == ["anchor_heads"] * 3
    heads = {s.path for s in model.fuse_report.swapped if s.block_type.endswith("Head")}
    launched_nothing_itself = {""} | heads | ({"body"} if not model.body.stems else set())
    assert set(blocks) == {s.path for s in model.fuse_report.swapped} - launched_nothing_itself
    assert rec.kernel_counts()["lateral_upsample_add"] == 3
    assert {e.backend for e in rec.events} == {fused.backend()}


def test_flag_and_context_manager_switch_paths():
    model = fused.fuse(R.randomize_batchnorm(R.retinaface()))
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        with fused.enabled(False), fused.recording() as rec:
            ref = model(x)
        # The model, its body, 1 conv_bn + 13 conv_dw, the FPN and its 2 merges, 3 SSH, 9 heads:
        # every fused module reports its fallback.
        assert rec.kernels() == set() and len(rec.fallbacks()) == len(model.fuse_report.swapped) == 31
        assert all(reason == "fused path disabled by the flag" for _, reason in rec.fallbacks())
        fused.set_enabled(False)
        try:
            assert not fused.is_enabled()
            with fused.enabled(True), fused.recording() as rec:
                out = model(x)
            assert rec.kernels() == {"conv2d_bias_act", "conv_dw_fused", "lateral_upsample_add", "anchor_heads"}
            assert not fused.is_enabled()  # restored on exit
        finally:
            fused.set_enabled(True)
    fused.assert_close(out[0], ref[0].double(), reduction_length=reduction_length(model))


def test_environment_variable_turns_the_fused_path_off():
    code = "import fused; print(fused.is_enabled())"
    env = dict(os.environ, FACEFUSE_FUSED="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_changing_weights_after_fusing_changes_the_output_like_the_reference():
    ref_model = R.randomize_batchnorm(R.retinaface(seed=3))
    model = fused.fuse(copy.deepcopy(ref_model))
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        model(x)  # fills the folded-weight cache
    with torch.no_grad():
        for m in (ref_model, model):
            m.fpn.output2[0].weight.mul_(-2.0)  # in place: version counter
            m.ssh1.conv3X3[1].running_var.add_(0.5)  # a BN buffer
            m.ssh2.conv5X5_1[1].bias.copy_(torch.linspace(-1, 1, 16))
    other = R.randomize_batchnorm(R.retinaface(seed=4), seed=5)
    R.load_weights(model, other.state_dict())  # load_state_dict after fusing
    R.load_weights(ref_model, other.state_dict())
    expected = float64_reference(ref_model, x)
    with torch.inference_mode():
        got = model(x)
    for out, exp in zip(got, expected):
        fused.assert_close(out, exp, reduction_length=reduction_length(model))


def test_weights_load_before_or_after_fusing_the_same_way(tmp_path):
    weights = R.randomize_batchnorm(R.retinaface(seed=7)).state_dict()
    a = fused.fuse(R.load_weights(R.retinaface(), weights))
    b = R.load_weights(fused.fuse(R.retinaface()), weights)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        for u, v in zip(a(x), b(x)):
            assert torch.equal(u, v)


def test_training_mode_runs_the_reference_and_updates_batchnorm():
    block = fused.conv_bn(3, 8, 2, leaky=0.1)
    block.train()
    x = torch.randn(4, 3, 9, 9)
    with fused.recording() as rec:
        out = block(x)
    assert rec.kernels() == set()
    assert rec.fallbacks() == [(None, "training mode: BatchNorm statistics must update")]
    assert float(block[1].running_mean.abs().sum()) > 0  # statistics updated
    assert out.requires_grad


def test_autograd_falls_back_with_a_warning_and_inference_mode_uses_the_kernel():
    block = fused.conv_bn(3, 8).eval()
    x = torch.randn(1, 3, 5, 5)
    fused.base.FusedModule._warned_autograd = False
    with pytest.warns(UserWarning, match="inference_mode"), fused.recording() as rec:
        y = block(x)
    y.sum().backward()  # gradients exist and are the reference's
    assert block[0].weight.grad is not None and rec.kernels() == set()
    with torch.inference_mode(), fused.recording() as rec:
        block(x)
    assert rec.kernels() == {"conv2d_bias_act"}


def test_float64_input_falls_back_to_the_reference_documented():
    block = R.randomize_batchnorm(fused.conv_bn(3, 8, leaky=0.1)).eval().double()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    with torch.inference_mode(), fused.recording() as rec:
        y = block(x)
        with fused.enabled(False):
            expected = block(x)
    assert torch.equal(y, expected)
    assert "float64 is not supported" in rec.fallbacks()[0][1]


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.randn(1, 4, 6, 6), ValueError, "expects 3 input channels, got 4"),
        (torch.randn(3, 6, 6), ValueError, "4-D tensor"),
        (torch.zeros(1, 3, 6, 6, dtype=torch.int32), TypeError, "floating-point"),
    ],
)
def test_bad_input_gets_a_clear_error(x, error, match):
    block = fused.conv_bn(3, 8).eval()
    with torch.inference_mode(), pytest.raises(error, match=match):
        block(x)


def test_cpu_tensor_on_a_cuda_machine_says_how_to_proceed(monkeypatch):
    monkeypatch.setattr(fused.runtime, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match=r"\.cuda\(\).*fused\.enabled\(False\)"):
        fused.runtime.check_inputs("conv2d_bias_act", torch.randn(1, 3, 4, 4))


def test_fused_constructors_mirror_the_reference_helpers():
    for fused_fn, ref_fn, args in [
        (fused.conv_bn, R.conv_bn, (3, 8, 2, 0.1)),
        (fused.conv_bn_no_relu, R.conv_bn_no_relu, (8, 8, 1)),
        (fused.conv_bn1X1, R.conv_bn1X1, (8, 16, 1, 0.1)),
    ]:
        f, r = fused_fn(*args), ref_fn(*args)
        assert isinstance(f, FusedConvBNAct)
        assert [(k, v.shape) for k, v in f.state_dict().items()] == [(k, v.shape) for k, v in r.state_dict().items()]


def test_fuse_is_idempotent_and_reports_what_it_skipped():
    model = fused.fuse(R.arcface())
    again = fused.fuse(model)
    assert len(again.fuse_report.swapped) == len(model.fuse_report.swapped)
    assert not any(isinstance(m, FusedConvBNAct) and isinstance(m[0], FusedConvBNAct) for m in model.modules())
    assert model.fuse_report.skipped == []  # stem and head run in FusedResNetArcFace itself
    detector = fused.fuse(R.retinaface("resnet50"))
    assert detector.fuse_report.skipped == []  # the 7x7 stem runs in FusedIntermediateLayers
    assert detector.body.stems == (("conv1", "bn1", "relu"),)
    odd = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 4))
    report = fused.fuse(odd).fuse_report
    assert [(s.path, s.reason) for s in report.skipped] == [("0", "not part of a recognised block"),
                                                            ("2", "not part of a recognised block")]
    assert "not fused: 2 x " not in str(report) and "[0]" in str(report)


def test_unsupported_convolutions_are_skipped_with_the_reason():
    seq = nn.Sequential(nn.Conv2d(4, 4, (3, 1), padding=(1, 0), bias=False), nn.BatchNorm2d(4))
    model = fused.fuse(nn.Sequential(seq))
    assert isinstance(model[0], nn.Sequential) and not isinstance(model[0], FusedConvBNAct)
    assert "not square and odd" in model.fuse_report.skipped[0].reason


def test_fuse_on_a_single_block_returns_its_fused_twin():
    block = R.randomize_batchnorm(R.conv_bn1X1(5, 7, 1, leaky=0.25)).eval()
    f = fused.fuse(block)
    assert isinstance(f, FusedConvBNAct) and f[0] is block[0]
    x = torch.randn(2, 5, 3, 3)
    with torch.inference_mode():
        fused.assert_close(f(x), block.double()(x.double()), reduction_length=5)


def test_tf32_is_an_explicit_option():
    with pytest.raises(ValueError, match="precision"):
        fused.fuse(R.retinaface(), precision="fp8")
    model = fused.fuse(R.retinaface(), precision="tf32")
    assert {m.precision for m in model.modules() if isinstance(m, FusedConvBNAct)} == {"tf32"}
    model = fused.fuse(R.retinaface(), precision="ieee")
    assert {m.precision for m in model.modules() if isinstance(m, FusedConvBNAct)} == {"ieee"}


def test_float32_precision_follows_pytorch_by_default(monkeypatch):
    """fuse()'s default, "auto", does what PyTorch's float32 convs do, read at each forward: TF32 on
    a GPU with TF32 while torch.backends.cudnn.allow_tf32 is on, exact products otherwise."""
    from fused import base
    block = fused.fuse(R.conv_bn(3, 8, 1))
    assert block.precision == "auto"
    x32, x16 = torch.empty(0), torch.empty(0, dtype=torch.float16)
    assert block.dot_precision(x32) == "ieee" and base.float32_precision("cpu") == "ieee"  # no TF32 on the CPU
    monkeypatch.setattr(base.runtime, "INTERPRETED", False)  # as compiled for a GPU ...
    capability = [(9, 0)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[0])
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert base.float32_precision("cuda") == "tf32"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert base.float32_precision("cuda") == "ieee"  # read now, not when fused
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    capability[0] = (7, 0)  # a V100 has no TF32
    assert base.float32_precision("cuda") == "ieee"
    assert block.dot_precision(x16) == "ieee"  # half inputs: TF32 does not apply
    block.precision = "ieee"
    capability[0] = (9, 0)
    assert block.dot_precision(torch.empty(0)) == "ieee"


# --- BN folding ----------------------------------------------------------------------------------


def test_fold_batchnorm_matches_conv_then_bn():
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 6, 3, padding=1, bias=True)
    bn = R.randomize_batchnorm(nn.BatchNorm2d(6)).eval()
    w, b = fused.fold_batchnorm(conv.weight, conv.bias, bn)
    x = torch.randn(2, 5, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(F.conv2d(x, w, b, padding=1), bn(conv(x)), rtol=1e-5, atol=1e-5)
    assert w.dtype == torch.float32 and b.dtype == torch.float32


def test_fold_batchnorm_computes_in_float32_for_a_half_model():
    conv = nn.Conv2d(3, 4, 1, bias=False).half()
    bn = R.randomize_batchnorm(nn.BatchNorm2d(4)).eval().half()
    w, b = fused.fold_batchnorm(conv.weight, None, bn)
    assert w.dtype == torch.float32
    scale = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
    torch.testing.assert_close(w, conv.weight.float() * scale[:, None, None, None])
    torch.testing.assert_close(b, bn.bias.float() - bn.running_mean.float() * scale)


def test_fold_batchnorm_refuses_training_mode_and_mismatched_channels():
    bn = nn.BatchNorm2d(4)
    with pytest.raises(ValueError, match="training mode"):
        fused.fold_batchnorm(torch.ones(4, 1, 1, 1), None, bn)
    with pytest.raises(ValueError, match="5 output channels but BatchNorm has 4"):
        fused.fold_batchnorm(torch.ones(5, 1, 1, 1), None, bn.eval())


def test_a_wrong_fold_is_caught_by_the_tolerance_check(monkeypatch):
    """The check can fail: a fold that forgets the BN mean (a realistic bug) is rejected."""
    model = fused.fuse(R.randomize_batchnorm(R.retinaface(seed=5)))
    x = torch.randn(1, 3, 32, 32)
    expected = float64_reference(model, x)
    real = fused.folding.fold_batchnorm

    def fold_forgetting_the_mean(weight, bias, bn):
        w, b = real(weight, bias, bn)
        return w, b + bn.running_mean.float() * bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)

    monkeypatch.setattr(fused.folding, "fold_batchnorm", fold_forgetting_the_mean)
    with torch.inference_mode(), pytest.raises(AssertionError, match="out of tolerance"):
        fused.assert_close(model(x)[0], expected[0], reduction_length=reduction_length(model))


def test_model_built_in_inference_mode_folds_fresh_weights_every_call():
    with torch.inference_mode():
        block = R.randomize_batchnorm(fused.conv_bn(3, 8, leaky=0.1)).eval()
        x = torch.randn(1, 3, 5, 5)
        first = block(x)
        block[0].weight.mul_(2)  # an inference tensor: no version counter to notice this
        second = block(x)
        with fused.enabled(False):
            expected = block(x)
    assert not torch.equal(first, second)
    fused.assert_close(second, expected.double(), reduction_length=27)


def test_the_flag_switches_single_block_types():
    model = fused.fuse(R.randomize_batchnorm(R.retinaface()))
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        expected = float64_reference(model, x)
        with fused.enabled(False, block_types={"SSH", "FPN"}), fused.recording() as rec:
            assert not fused.is_enabled("SSH") and fused.is_enabled("conv_dw") and fused.is_enabled()
            out = model(x)
        assert fused.is_enabled("SSH") and fused.is_enabled("FPN")  # restored on exit
    assert sorted(block for block, _ in rec.fallbacks()) == ["fpn", "ssh1", "ssh2", "ssh3"]
    assert all(reason.endswith(("SSH blocks", "FPN blocks")) for _, reason in rec.fallbacks())
    assert "lateral_upsample_add" not in rec.kernels() and "anchor_heads" in rec.kernels()
    for o, e in zip(out, expected):
        fused.assert_close(o, e, reduction_length=reduction_length(model))
    fused.set_enabled(False, block_types="conv_dw")
    try:
        assert not fused.is_enabled("conv_dw") and fused.flag.disabled_block_types() == {"conv_dw"}
    finally:
        fused.set_enabled(True, block_types="conv_dw")
    assert fused.flag.disabled_block_types() == set()
    with pytest.raises(TypeError, match="block type names"):
        fused.set_enabled(False, block_types=[R.SSH])
