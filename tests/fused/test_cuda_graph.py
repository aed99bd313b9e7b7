"""fused.cuda_graph: the errors without CUDA, and when it re-captures (checked on the CPU with a fake
capture that replays by running the model); the real capture and replay on a GPU."""

import copy

import pytest
import torch

import fused
import reference as R
from fused.graphs import CaptureKey, CudaGraphModel

COMPILED_CUDA = torch.cuda.is_available() and not fused.runtime.INTERPRETED


class FakeGraph(CudaGraphModel):
    """Captures by running the model once; a replay runs it again into the same output tensors."""

    def check_device(self, x):
        pass

    def capture(self, static_input):
        with torch.inference_mode():
            outputs = self.model(static_input)

        def replay():
            with torch.inference_mode():
                outputs.copy_(self.model(static_input))

        return replay, outputs


def block():
    return R.randomize_batchnorm(fused.conv_bn(4, 8, 1, leaky=0.1), seed=1).eval()


def eager(model, x):
    with torch.inference_mode():
        return model(x)


@pytest.mark.skipif(COMPILED_CUDA, reason="on a CUDA machine the kernels compile: no error to show")
def test_without_cuda_it_says_to_call_the_model_directly():
    with pytest.raises(RuntimeError, match=r"needs a CUDA GPU.*Call the model directly instead: model\(x\)"):
        fused.cuda_graph(block(), torch.randn(1, 4, 6, 6))


@pytest.mark.skipif(not COMPILED_CUDA, reason="needs compiled CUDA kernels")
def test_a_cpu_input_on_a_cuda_machine_says_to_move_it():
    with pytest.raises(ValueError, match=r"move the model and the input to the GPU"):
        fused.cuda_graph(block(), torch.randn(1, 4, 6, 6))


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="takes an nn.Module"):
        FakeGraph(lambda x: x, torch.randn(1))
    with pytest.raises(TypeError, match="one input tensor"):
        FakeGraph(block(), [torch.randn(1, 4, 6, 6)])
    with pytest.raises(ValueError, match=r"training mode.*model.eval\(\)"):
        FakeGraph(block().train(), torch.randn(1, 4, 6, 6))


def test_replays_while_nothing_changes_and_recaptures_on_a_new_shape_or_dtype():
    model, x = block(), torch.randn(1, 4, 6, 6)
    graph = FakeGraph(model, x)
    assert graph.captures == 1
    y = torch.randn(1, 4, 6, 6)
    assert torch.equal(graph(y), eager(model, y))
    assert torch.equal(graph(y.contiguous(memory_format=torch.channels_last)), eager(model, y))  # copied in
    assert graph.captures == 1
    z = torch.randn(2, 4, 5, 7)
    assert torch.equal(graph(z), eager(model, z)) and graph.captures == 2
    model.half()
    assert torch.equal(graph(z.half()), eager(model, z.half())) and graph.captures == 3


def test_recaptures_on_every_weight_or_setting_change_the_fold_cache_sees():
    model, x = block(), torch.randn(1, 4, 6, 6)
    graph = FakeGraph(model, x)
    changes = [
        lambda: model[0].weight.mul_(2),                        # in place: version counter
        lambda: model[1].running_var.copy_(model[1].running_var * 3),
        lambda: model.load_state_dict(block().state_dict()),
        lambda: setattr(model[0], "weight", torch.nn.Parameter(torch.randn(8, 4, 3, 3))),
        lambda: setattr(model[2], "negative_slope", 0.3),     # a setting
        lambda: setattr(model, "precision", "tf32"),
    ]
    for count, change in enumerate(changes, start=2):
        with torch.no_grad():
            change()
        assert torch.equal(graph(x), eager(model, x))
        assert graph.captures == count


def test_a_write_that_bypasses_the_version_counter_needs_refresh_as_for_the_fold_cache():
    model, x = block(), torch.randn(1, 4, 6, 6)
    graph = FakeGraph(model, x)
    before = graph(x)
    model[0].weight.data.mul_(2)  # invisible to version counters (documented)
    assert torch.equal(graph(x), before) and graph.captures == 1
    fused.refresh(model)
    assert graph.captures == 1
    assert torch.equal(graph(x), eager(model, x)) and graph.captures == 2
    assert not torch.equal(graph(x), before)


def test_flag_and_mode_changes_recapture():
    model, x = block(), torch.randn(1, 4, 6, 6)
    graph = FakeGraph(model, x)
    with fused.enabled(False), fused.recording() as rec:
        graph(x)
    assert graph.captures == 2 and rec.fallbacks()  # captured the reference forward
    graph(x)
    assert graph.captures == 3
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        graph(x)


def test_calls_inside_and_outside_inference_mode_mix():
    model, x = block(), torch.randn(1, 4, 6, 6)
    with torch.inference_mode():
        graph = FakeGraph(model, x)
        inside = graph(x)
    assert torch.equal(graph(x), inside) and graph.captures == 1


def test_outputs_are_clones_unless_asked_otherwise():
    model, x = block(), torch.randn(1, 4, 6, 6)
    graph = FakeGraph(model, x)
    first = graph(x)
    second = graph(torch.randn(1, 4, 6, 6))
    assert torch.equal(first, eager(model, x)) and first.data_ptr() != second.data_ptr()
    shared = FakeGraph(model, x, clone=False)
    a = shared(x)
    assert shared(torch.randn(1, 4, 6, 6)) is a  # the graph's own buffer, overwritten by each call


def test_a_model_built_in_inference_mode_is_refused():
    with torch.inference_mode():
        model = block()
    with pytest.raises(ValueError, match="made under torch.inference_mode"):
        FakeGraph(model, torch.randn(1, 4, 6, 6))


def test_capture_key_is_stable_across_calls():
    model = fused.fuse(R.randomize_batchnorm(R.retinaface(seed=1), seed=2))
    x = torch.randn(1, 3, 32, 32)
    eager(model, x)
    assert CaptureKey(model, x) == CaptureKey(model, x.clone())
    eager(model, x)  # a forward changes nothing the key holds
    assert CaptureKey(model, x) == CaptureKey(model, x)


@pytest.mark.gpu
def test_cuda_graph_replays_the_fused_retinaface_exactly():
    model = fused.fuse(R.randomize_batchnorm(R.retinaface(seed=3), seed=4)).cuda().half().eval()
    x = torch.randn(1, 3, 96, 128, device="cuda", dtype=torch.float16)
    graph = fused.cuda_graph(model, x)
    for inp in (x, torch.randn_like(x)):
        got, expected = graph(inp), eager(model, inp)
        for g, e in zip(got, expected):
            assert torch.equal(g, e)
    assert graph.captures == 1
    with torch.no_grad():
        model.body.stage1[0][0].weight.mul_(1.5)
    got, expected = graph(x), eager(model, x)
    assert graph.captures == 2 and all(torch.equal(g, e) for g, e in zip(got, expected))
    small = torch.randn(1, 3, 64, 64, device="cuda", dtype=torch.float16)
    got, expected = graph(small), eager(model, small)
    assert graph.captures == 3 and all(torch.equal(g, e) for g, e in zip(got, expected))
    reference = copy.deepcopy(model)
    with fused.enabled(False):
        assert all(torch.allclose(g.float(), r.float(), atol=5e-2, rtol=5e-2)
                   for g, r in zip(graph(small), eager(reference, small)))
