"""Fused models under ``torch.compile(fullgraph=True)`` and ``torch.export``: the kernels run as
``torch.ops.facefuse.*`` operators, with no graph break, and give the eager fused answer; the
flag, the folds and the fallbacks behave as the README's "With torch.compile / torch.export"
section says.

Most tests compile with ``backend="aot_eager"`` (Dynamo and AOTAutograd, the same graph Inductor
gets, without generating C++): one test runs Inductor itself.
"""

from __future__ import annotations

import collections
import copy

import pytest
import torch
from torch import nn

import fused
import reference as R
from fused import assert_close, reduction_length


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles its own models: no cache entries left from another test."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Graphs:
    """A torch.compile backend that keeps the FX graphs Dynamo produces and runs them as they are."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward

    def targets(self, index=-1) -> collections.Counter:
        graph = self.graphs[index].graph
        return collections.Counter(str(n.target).removesuffix(".default") for n in graph.nodes
                                   if n.op == "call_function")


def facefuse_ops(targets) -> int:
    return sum(n for name, n in targets.items() if name.startswith("facefuse."))


def convolutions(targets) -> int:
    return sum(n for name, n in targets.items() if "conv2d" in name and not name.startswith("facefuse.")
               or "convolution" in name)


def detector(name="mobile0.25"):
    return fused.fuse(R.randomize_batchnorm(R.retinaface(name, seed=3), seed=4))


def small_arcface():
    """ResNetArcFace with one IRBlock per stage, SE on (every op family of the identity model)."""
    torch.manual_seed(0)
    return fused.fuse(R.randomize_batchnorm(R.ResNetArcFace("IRBlock", (1, 1, 1, 1), use_se=True).eval(), seed=2))


MODELS = {
    "retinaface-mobile0.25": (detector, (1, 3, 64, 64)),
    "retinaface-resnet50": (lambda: detector("resnet50"), (1, 3, 33, 47)),
    "arcface-se": (small_arcface, (1, 1, 128, 128)),
}


def as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def check_equal(actual, expected, model):
    for a, e in zip(as_tuple(actual), as_tuple(expected), strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype
        assert_close(a, e.double(), reduction_length=reduction_length(model))


@pytest.mark.parametrize("name", MODELS)
def test_fullgraph_compile_gives_the_eager_fused_answer(name):
    build, shape = MODELS[name]
    model = build()
    x = torch.randn(shape)
    graphs = Graphs()
    with torch.inference_mode():
        eager = model(x)
        with fused.recording() as rec:
            compiled = torch.compile(model, fullgraph=True, backend=graphs)(x)
    check_equal(compiled, eager, model)
    targets = graphs.targets()
    assert len(graphs.graphs) == 1
    assert facefuse_ops(targets) > 0 and convolutions(targets) == 0, targets
    assert rec.kernels() and rec.fallbacks() == []  # the ops' bodies record the launches at run time


@pytest.mark.parametrize("name", ["retinaface-mobile0.25"])  # fullgraph=True tests every model
def test_dynamo_explain_reports_no_graph_break(name):
    build, shape = MODELS[name]
    with torch.inference_mode():
        explanation = torch._dynamo.explain(build())(torch.randn(shape))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_inductor_compiles_the_fused_detector():
    model = detector()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)
        check_equal(compiled(x), eager, model)
        check_equal(compiled(x), eager, model)  # the compiled code, reused


def test_export_of_the_fused_detector_has_our_ops_and_no_convolution():
    model = detector()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        eager = model(x)
    with torch.no_grad():
        exported = torch.export.export(model, (x,))
    targets = collections.Counter(str(n.target) for n in exported.graph.nodes if n.op == "call_function")
    assert not [t for t in targets if "convolution" in t or "conv2d" in t and not t.startswith("facefuse.")], targets
    assert targets["facefuse.conv_dw_fused.default"] == 13
    assert targets["facefuse.anchor_heads.default"] == 3
    assert targets["facefuse.lateral_upsample_add.default"] == 3
    assert targets["facefuse.conv2d_bias_act.default"] + targets["facefuse.conv2d_bias_act_out.default"] == 15
    with torch.no_grad():
        check_equal(exported.module()(x), eager, model)
        other = torch.randn(1, 3, 64, 64)  # the program, not a memo of one input
        check_equal(exported.module()(other), model(other), model)
        # The exported program checks its input: the shape and dtype it was exported for.
        with pytest.raises(Exception, match="size"):
            exported.module()(torch.randn(1, 3, 32, 32))
        with pytest.raises(Exception, match="dtype"):
            exported.module()(torch.randn(1, 3, 64, 64, dtype=torch.float16))


# -- the flag, the folds and the fallbacks under compile -------------------------------------------

def small_model():
    torch.manual_seed(0)
    model = nn.Sequential(R.conv_bn(3, 8, 2, 0.1), R.conv_dw(8, 16, 1, 0.1), R.conv_bn(16, 8, 1, 0.0))
    return fused.fuse(R.randomize_batchnorm(model.eval(), seed=1))


def test_the_flag_is_read_when_tracing_and_a_change_retraces():
    model, x = small_model(), torch.randn(2, 3, 16, 16)
    graphs = Graphs()
    compiled = torch.compile(model, fullgraph=True, backend=graphs)
    with torch.inference_mode():
        expected = model(x)
        with fused.enabled(False):
            reference = model(x)
        for _ in range(3):  # toggling reuses the code compiled for each setting
            with fused.recording() as on:
                check_equal(compiled(x), expected, model)
            with fused.enabled(False), fused.recording() as off:
                assert torch.equal(compiled(x), reference)
            with fused.enabled(False, block_types={"conv_dw"}), fused.recording() as partly:
                compiled(x)
            assert on.kernel_counts() == {"conv2d_bias_act": 2, "conv_dw_fused": 1}
            assert off.kernels() == set()
            assert partly.kernel_counts() == {"conv2d_bias_act": 2}
    assert len(graphs.graphs) == 3
    assert facefuse_ops(graphs.targets(0)) == 3
    assert facefuse_ops(graphs.targets(1)) == 0 and convolutions(graphs.targets(1)) == 4
    assert facefuse_ops(graphs.targets(2)) == 2 and convolutions(graphs.targets(2)) == 2


def test_folds_are_part_of_the_graph_so_weight_changes_are_never_stale():
    model, x = small_model(), torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.inference_mode():
        before = compiled(x)
    with torch.no_grad():
        model[0][1].weight.mul_(2)          # seen by the eager cache too
        model[1][4].running_var.data.mul_(3)  # .data: the eager cache cannot see it (fused.refresh)
    with torch.inference_mode():
        after = compiled(x)
        expected = fused.refresh(model)(x)
    assert not torch.equal(before, after)
    check_equal(after, expected, model)


def test_compiled_fallbacks_training_grad_and_float64_take_the_reference_path():
    model, x = small_model(), torch.randn(2, 3, 16, 16)
    graphs = Graphs()
    compiled = torch.compile(model, fullgraph=True, backend=graphs)
    # autograd recording: the reference path, differentiable
    out = compiled(x)
    out.sum().backward()
    assert model[0][0].weight.grad is not None
    assert facefuse_ops(graphs.targets()) == 0
    # float64 model and input: the kernels take float32/16 and bfloat16 only
    with torch.inference_mode():
        double = copy.deepcopy(model).double()
        expected = double(x.double())
        with fused.recording() as rec:
            assert torch.equal(torch.compile(double, fullgraph=True, backend=graphs)(x.double()), expected)
    assert rec.kernels() == set() and facefuse_ops(graphs.targets()) == 0
    # training mode: BatchNorm statistics update, as in eager
    model.train()
    before = model[0][1].running_mean.clone()
    with torch.no_grad():
        compiled(x)
    assert facefuse_ops(graphs.targets()) == 0
    assert not torch.equal(before, model[0][1].running_mean)


def test_compiled_models_reject_bad_input_clearly():
    model = small_model()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.inference_mode():
        with pytest.raises(Exception, match="input is float16 but the model's weights are float32"):
            compiled(torch.randn(1, 3, 16, 16, dtype=torch.float16))
        with pytest.raises(Exception, match="channel"):
            compiled(torch.randn(1, 5, 16, 16))


def test_a_compiled_model_recompiles_for_a_new_input_size():
    model = small_model()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.inference_mode():
        for size in (16, 24, 20):
            x = torch.randn(1, 3, size, size)
            check_equal(compiled(x), model(x), model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_channels_last_and_bfloat16_match_eager(dtype):
    """Fake implementations give eager's strides (channels_last stays channels_last), and the
    interpreter's bfloat16 handling runs inside the operators."""
    model = small_model().to(dtype=dtype, memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        eager = model(x)
        with fused.recording() as rec:
            compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    assert torch.equal(compiled, eager) and compiled.stride() == eager.stride()
    assert compiled.is_contiguous(memory_format=torch.channels_last)
    assert rec.kernel_counts() == {"conv2d_bias_act": 2, "conv_dw_fused": 1}
