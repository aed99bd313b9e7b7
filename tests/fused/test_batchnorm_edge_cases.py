"""BatchNorms that are not the usual trained kind: affine=False, track_running_stats=False, and
running_var + eps == 0 (an infinite scale, which no folded weight reproduces)."""

import pytest
import torch
from torch import nn

import fused
import reference as R
from fused.tolerance import reduction_length


def conv_bn(**bn_options):
    """A conv_bn (3x3 conv → BN → LeakyReLU 0.1) whose BatchNorm is built with ``bn_options``."""
    return nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6, **bn_options),
                         nn.LeakyReLU(0.1)).eval()


def run(model, x):
    """``(output, record)`` of ``model(x)`` on the current path."""
    with fused.recording() as rec, torch.inference_mode():
        return model(x), rec


def reference_output(model, x, dtype=None):
    with fused.enabled(False), torch.inference_mode():
        if dtype is None:
            return model(x)
        import copy
        return copy.deepcopy(model).to(dtype)(x.to(dtype))


@pytest.mark.parametrize("options", [dict(affine=False), dict(track_running_stats=False),
                                     dict(affine=False, track_running_stats=False)])
def test_randomize_batchnorm_takes_every_batchnorm(options):
    model = R.randomize_batchnorm(conv_bn(**options), seed=3)
    bn = model[1]
    if bn.running_var is not None:
        assert not torch.equal(bn.running_var, torch.ones(6))  # randomised, not the identity's
    if bn.weight is not None:
        assert not torch.equal(bn.weight, torch.ones(6))


def test_randomize_batchnorm_values_unchanged_for_ordinary_batchnorms():
    """The same seed gives the same statistics as before (tests and lessons rely on them)."""
    g = torch.Generator().manual_seed(5)
    mean, var = torch.randn(6, generator=g) * 0.2, torch.rand(6, generator=g) * 0.8 + 0.6
    weight, bias = torch.rand(6, generator=g) * 0.8 + 0.6, torch.randn(6, generator=g) * 0.2
    bn = R.randomize_batchnorm(conv_bn(), seed=5)[1]
    for got, want in [(bn.running_mean, mean), (bn.running_var, var), (bn.weight, weight), (bn.bias, bias)]:
        assert torch.equal(got, want)


def test_affine_false_batchnorm_fuses():
    model = fused.fuse(R.randomize_batchnorm(conv_bn(affine=False), seed=1))
    assert isinstance(model, fused.FusedConvBNAct) and not model.fuse_report.skipped
    x = torch.randn(2, 4, 9, 7)
    out, rec = run(model, x)
    assert rec.kernels() == {"conv2d_bias_act"} and not rec.fallbacks()
    fused.assert_close(out, reference_output(model, x, torch.float64), reduction_length=reduction_length(model[0]))


def test_batch_statistics_batchnorm_is_left_to_pytorch_with_the_reason():
    model = fused.fuse(R.randomize_batchnorm(conv_bn(track_running_stats=False), seed=1))
    assert not isinstance(model, fused.FusedModule)
    [skipped] = model.fuse_report.skipped
    assert "track_running_stats=False" in skipped.reason
    x = torch.randn(2, 4, 9, 7)
    out, rec = run(model, x)
    assert not rec.kernels()
    torch.testing.assert_close(out, reference_output(model, x))


def zero_variance(model, channels=(1, 4)):
    """Set ``running_var = 0`` in ``channels`` and ``eps = 0`` on the model's BatchNorm."""
    bn = model[1]
    with torch.no_grad():
        bn.running_var[list(channels)] = 0
    bn.eps = 0.0
    return model


def assert_same_nonfinite(out, ref):
    """NaN and ±Inf exactly where the reference has them, and the finite values equal."""
    assert out.dtype == ref.dtype
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isposinf(), ref.isposinf())
    assert torch.equal(out.isneginf(), ref.isneginf())
    torch.testing.assert_close(out, ref, equal_nan=True)


def test_zero_variance_without_eps_is_refused_at_fuse_time():
    model = zero_variance(R.randomize_batchnorm(conv_bn(), seed=2))
    x = torch.randn(2, 4, 9, 7)
    ref = reference_output(model, x)
    assert ref.isnan().any() and ref.isinf().any()  # the reference mixes NaN and ±Inf
    model = fused.fuse(model)
    assert not isinstance(model, fused.FusedModule)
    [skipped] = model.fuse_report.skipped
    assert "running_var + eps == 0 in channel(s) 1, 4" in skipped.reason and "positive eps" in skipped.reason
    assert "running_var + eps == 0" in str(model.fuse_report)
    out, _ = run(model, x)
    assert_same_nonfinite(out, ref)


def test_zero_variance_after_fuse_falls_back_with_the_reason():
    """Statistics loaded after fuse(): the fused module runs the reference forward and records why
    (folded, every output of those channels would be NaN)."""
    model = fused.fuse(R.randomize_batchnorm(conv_bn(), seed=2))
    x = torch.randn(2, 4, 9, 7)
    run(model, x)  # a fold is cached for the healthy statistics
    zero_variance(model)
    ref = reference_output(model, x)
    out, rec = run(model, x)
    assert not rec.kernels()
    [(path, reason)] = rec.fallbacks()
    assert "running_var + eps == 0" in reason
    assert_same_nonfinite(out, ref)
    model[1].eps = 1e-5  # fixed: the kernel runs again
    out, rec = run(model, x)
    assert rec.kernels() == {"conv2d_bias_act"} and not rec.fallbacks()


def test_zero_variance_in_an_input_affine_batchnorm_falls_back():
    """IRBlock's bn0 folds into conv1 (its scale into the weights, its shift into the per-tap
    bias): with an infinite scale that would give NaN (inf - inf) where the reference gives ±Inf."""
    block = R.randomize_batchnorm(R.IRBlock(4, 4, use_se=False).eval(), seed=4)
    x = torch.randn(1, 4, 6, 6)
    block = fused.fuse(block)
    with torch.no_grad():
        block.bn0.running_var[2] = 0
    block.bn0.eps = 0.0
    ref = reference_output(block, x)
    out, rec = run(block, x)
    assert [reason for _, reason in rec.fallbacks()] and "running_var + eps == 0" in rec.fallbacks()[0][1]
    assert_same_nonfinite(out, ref)

    fresh = R.randomize_batchnorm(R.IRBlock(4, 4, use_se=False).eval(), seed=4)
    with torch.no_grad():
        fresh.bn0.running_var[2] = 0
    fresh.bn0.eps = 0.0
    assert "bn0: running_var + eps == 0 in channel(s) 2" in str(fused.fuse(fresh).fuse_report)


def test_a_meta_batchnorm_folds_without_reading_its_values():
    """``facefuse inspect`` runs the fused models on the meta device: the fold cannot read the
    statistics there, so it skips the ``running_var + eps == 0`` check instead of failing."""
    bn = nn.BatchNorm2d(3).eval().to("meta")
    weight, bias = fused.fold_batchnorm(torch.empty(3, 2, 3, 3, device="meta"), None, bn)
    assert weight.is_meta and weight.shape == (3, 2, 3, 3) and bias.shape == (3,)
    folded, border_bias = fused.fold_input_affine(weight, *fused.batchnorm_affine(nn.BatchNorm2d(2).eval().to("meta")), 1)
    assert folded.is_meta and border_bias.shape == (16, 3)
