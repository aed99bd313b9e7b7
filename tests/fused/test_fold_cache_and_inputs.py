"""No silently wrong answer: the fold cache's freshness, fuse-time decisions, input dtypes, layout,
pickling and hooks."""

import copy
import io
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import fused
import reference as R


def fused_and_reference(block, x):
    """The fused module's output (kernels) and its reference forward's, under inference mode."""
    with torch.inference_mode():
        out = block(x)
        with fused.enabled(False):
            return out, block(x)


def assert_same(a, b):
    for u, v in zip(a if isinstance(a, (tuple, list)) else [a], b if isinstance(b, (tuple, list)) else [b]):
        fused.assert_close(u, v.double(), reduction_length=16 * 49)


# --- the fold cache --------------------------------------------------------------------------------


def test_batchnorm_eps_is_in_the_cache_key():
    block = R.randomize_batchnorm(fused.conv_bn(4, 8, leaky=0.1), seed=1).eval()
    x = torch.randn(1, 4, 6, 6)
    fused_and_reference(block, x)  # fills the cache
    block[1].eps = 10.0  # a non-tensor attribute the fold reads
    out, ref = fused_and_reference(block, x)
    assert_same(out, ref)


def test_an_activation_slope_read_by_the_fold_is_in_the_cache_key():
    ssh = fused.fuse(R.randomize_batchnorm(R.SSH(16, 16), seed=2).eval())
    x = torch.randn(1, 16, 5, 5)
    fused_and_reference(ssh, x)
    ssh.conv5X5_1[2].negative_slope = 0.9  # SSH folds this slope into its shared launch
    out, ref = fused_and_reference(ssh, x)
    assert_same(out, ref)


def test_data_writes_are_not_seen_but_refresh_and_verify_folds_handle_them():
    block = R.randomize_batchnorm(fused.conv_bn(4, 8), seed=3).eval()
    x = torch.randn(1, 4, 6, 6)
    fused_and_reference(block, x)
    block[0].weight.data.mul_(-2)  # .data has its own version counter: invisible to the cache
    with fused.verify_folds(), pytest.raises(RuntimeError, match=r"stale.*fused\.refresh\(model\)"):
        with torch.inference_mode():
            block(x)
    assert fused.refresh(block) is block
    out, ref = fused_and_reference(block, x)
    assert_same(out, ref)
    with fused.verify_folds():  # fresh now: verifying passes
        fused_and_reference(block, x)
    assert not fused.base.verifying_folds()  # the context manager restored the setting


def test_verify_folds_can_be_set_by_the_environment():
    code = "import fused; print(fused.base.verifying_folds())"
    env = dict(os.environ, FACEFUSE_VERIFY_FOLDS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.stdout.strip() == "True"


def test_moving_converting_or_assign_loading_the_model_drops_the_folds():
    ref_model = R.randomize_batchnorm(R.retinaface(seed=3), seed=4).eval()
    model = fused.fuse(copy.deepcopy(ref_model))
    x = torch.randn(1, 3, 32, 32)
    fused_and_reference(model, x)
    caches = lambda: [m for m in model.modules() if "_facefuse_cache" in m.__dict__]  # noqa: E731
    assert caches()
    model.half().float()  # values rounded through float16, possibly at the old addresses
    assert caches() == []
    out, ref = fused_and_reference(model, x)
    assert_same(out, ref)
    weights = R.randomize_batchnorm(R.retinaface(seed=5), seed=6).state_dict()
    model.load_state_dict(weights, assign=True)
    assert caches() == []
    out, ref = fused_and_reference(model, x)
    assert_same(out, ref)


def test_replacing_a_parameter_with_data_assignment_is_seen():
    block = R.randomize_batchnorm(fused.conv_bn(4, 8), seed=3).eval()
    x = torch.randn(1, 4, 6, 6)
    fused_and_reference(block, x)
    for _ in range(3):
        # Two assignments: the second tensor may get the first's freed address, the very one the
        # cache key holds, unless the cache keeps the storages it folded alive.
        block[0].weight.data = torch.randn_like(block[0].weight)
        block[0].weight.data = torch.randn_like(block[0].weight)
        out, ref = fused_and_reference(block, x)
        assert_same(out, ref)


def test_torch_save_leaves_the_folds_out_and_a_loaded_fused_model_works():
    model = fused.fuse(R.randomize_batchnorm(R.retinaface(seed=1), seed=2).eval())
    x = torch.randn(2, 3, 32, 32)
    expected, _ = fused_and_reference(model, x)  # fills the cache
    sizes = {}
    for what, obj in (("model", model), ("state", model.state_dict())):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        sizes[what] = buffer.tell()
    assert sizes["model"] < 1.2 * sizes["state"], sizes  # not the weights twice
    buffer.seek(0)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.inference_mode(), fused.recording() as rec:
        got = loaded(x)
    assert rec.fallbacks() == [] and "conv2d_bias_act" in rec.kernels()
    for u, v in zip(got, expected):
        assert torch.equal(u, v)


# --- decided at fuse time --------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("channels", [1, 8, 15])
def test_squeeze_excite_with_no_hidden_units_is_fused_and_equals_the_reference(channels):
    se = R.SEBlock(channels).eval()
    with torch.no_grad():
        se.fc[2].bias.normal_()
    ir = R.randomize_batchnorm(R.IRBlock(channels, channels, 1, None, use_se=True), seed=1).eval()
    ds = nn.Sequential(nn.Conv2d(channels, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
    ir_ds = R.randomize_batchnorm(R.IRBlock(channels, 8, 2, ds, use_se=True), seed=2).eval()
    x = torch.randn(2, channels, 6, 6)
    x[0, 0, 1, 1] = float("nan")  # stays where the reference puts it
    for block in (se, ir, ir_ds):
        fused.fuse(block)
        assert block.fuse_report.skipped == []
        with torch.inference_mode(), fused.recording() as rec:
            block(x)
        assert rec.fallbacks() == [] and rec.kernels()
        out, ref = fused_and_reference(block, x)
        assert_same(out, ref)


def _no_running_stats(bn: nn.Module) -> nn.Module:
    cls = type(bn)
    return cls(bn.num_features, track_running_stats=False).eval()


def _cases():
    conv_bn = R.conv_bn(4, 8)
    conv_bn[1] = _no_running_stats(conv_bn[1])
    conv_dw = R.conv_dw(4, 8, 1)
    conv_dw[4] = _no_running_stats(conv_dw[4])
    ir = R.IRBlock(8, 8, 1, None, use_se=False)
    ir.bn0 = _no_running_stats(ir.bn0)
    ds = nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), nn.BatchNorm2d(8, track_running_stats=False))
    basic = R.BasicBlock(4, 8, 1, ds)
    ssh = R.SSH(8, 8)
    ssh.conv7x7_3[1] = _no_running_stats(ssh.conv7x7_3[1])
    return [("conv_bn", conv_bn, 4), ("conv_dw", conv_dw, 4), ("IRBlock", ir, 8), ("BasicBlock", basic, 4),
            ("SSH", ssh, 8)]


@pytest.mark.parametrize("kind, block, channels", _cases(), ids=[c[0] for c in _cases()])
def test_batchnorm_without_running_stats_keeps_the_reference_with_a_reason(kind, block, channels):
    block = block.eval()
    x = torch.randn(2, channels, 6, 6)
    with torch.inference_mode():
        expected = block(x)
    fused.fuse(block)
    assert not isinstance(block, fused.FusedModule)
    [skipped] = [s for s in block.fuse_report.skipped if s.what == kind]
    assert "track_running_stats=False" in skipped.reason
    with torch.inference_mode():
        assert_same(block(x), expected)  # the reference forward (its inner conv_bn blocks may be fused)


def test_arcface_head_without_running_stats_leaves_the_head_in_pytorch_and_fuses_the_blocks():
    model = R.randomize_batchnorm(R.arcface(seed=2), seed=3).eval()
    model.bn5 = _no_running_stats(model.bn5)
    x = torch.randn(2, 1, 128, 128)
    fused.fuse(model)
    assert not isinstance(model, fused.FusedModule)
    assert any(s.what == "ResNetArcFace" and "bn5" in s.reason for s in model.fuse_report.skipped)
    assert isinstance(model.layer1[0], fused.FusedIRBlock)
    with torch.inference_mode(), fused.recording() as rec:
        model(x)
    assert "conv2d_bias_act" in rec.kernels()


# --- input dtypes: the same error on every path ----------------------------------------------------


def _paths(block, x):
    """Call ``block(x)`` with the flag on and off, with and without autograd; yield each error."""
    for enabled in (True, False):
        for grad in (True, False):
            with fused.enabled(enabled), torch.set_grad_enabled(grad), pytest.raises(TypeError) as info:
                block(x)
            yield str(info.value)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.zeros(1, 4, 6, 6, dtype=torch.int64), r"floating-point.*x\.float\(\)"),
        (torch.zeros(1, 4, 6, 6, dtype=torch.float64), r"float64 .*float32.*model\.double\(\)"),
        (torch.zeros(1, 4, 6, 6, dtype=torch.float16), r"float16 .*float32.*x\.to\(torch\.float32\)"),
    ],
    ids=["int64", "float64", "float16"],
)
def test_wrong_input_dtype_gets_one_clear_type_error_on_every_path(x, match):
    block = fused.conv_bn(4, 8).eval()
    messages = set(_paths(block, x))
    assert len(messages) == 1, messages
    assert re.search(match, messages.pop())


def test_float64_runs_when_the_model_is_float64_too():
    block = R.randomize_batchnorm(fused.conv_bn(4, 8), seed=1).eval().double()
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    with torch.no_grad(), fused.recording() as rec:
        out = block(x)
    assert "float64" in rec.fallbacks()[0][1]
    with torch.no_grad(), fused.enabled(False):
        assert torch.equal(out, block(x))


def test_fpn_list_input_is_checked_too():
    fpn = fused.fuse(R.FPN([8, 16, 32], 8).eval())
    xs = [torch.randn(1, c, s, s, dtype=torch.float16) for c, s in ((8, 8), (16, 4), (32, 2))]
    assert len(set(_paths(fpn, xs))) == 1


def test_whole_models_reject_a_mismatched_input_dtype_alike():
    for model, x in ((R.retinaface(), torch.randn(1, 3, 32, 32)), (R.arcface(), torch.randn(1, 1, 128, 128))):
        fused.fuse(model.eval())
        assert len(set(_paths(model, x.half()))) == 1


# --- layout, fuse() arguments, hooks ---------------------------------------------------------------


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_ssh_output_has_the_reference_layout(memory_format):
    ssh = fused.fuse(R.randomize_batchnorm(R.SSH(16, 16), seed=5).eval())
    x = torch.randn(3, 16, 5, 6).to(memory_format=memory_format)
    out, ref = fused_and_reference(ssh, x)
    assert out.stride() == ref.stride()
    assert_same(out, ref)
    if memory_format == torch.contiguous_format:
        assert torch.equal(out.view(-1), out.reshape(-1))  # .view works as on the reference output


def test_fuse_rejects_what_is_not_a_module():
    with pytest.raises(TypeError, match="nn.Module.*str"):
        fused.fuse("not a module")


def test_hooks_inside_a_fused_block_get_a_warning_at_fuse_time():
    block = R.conv_bn(4, 8).eval()
    calls = []
    block[0].register_forward_hook(lambda *a: calls.append("conv"))
    with pytest.warns(UserWarning, match=r"hooks on 0 will not fire.*block_types=\{'conv_bn'\}"):
        fused.fuse(block)
    block.register_forward_hook(lambda *a: calls.append("block"))
    fused_and_reference(block, torch.randn(1, 4, 5, 5))
    assert calls == ["block", "conv", "block"]  # fused: the block's hook only; reference: both
