"""The kernels as PyTorch custom operators (``torch.ops.facefuse.*``, fused.kernels.ops):
``torch.library.opcheck`` of every operator (schema, fake tensors with shapes *and* strides,
channels_last inputs, ``out=`` into a channel slice), and the launchers under ``torch.compile``."""

from __future__ import annotations

import pytest
import torch

import fused
from fused.kernels import conv2d, ops
from fused.kernels.conv2d import conv2d_bias_act
from fused.kernels.depthwise import depthwise_conv_bias_act
from fused.kernels.fpn import lateral_upsample_add

F = torch.ops.facefuse
CL = torch.channels_last


def r(*shape, fmt=None, dtype=torch.float32):
    t = torch.randn(*shape, dtype=dtype)
    return t.contiguous(memory_format=fmt) if fmt is not None else t


def kernel_weight(k, c, size):
    """A weight laid out as the fused modules fold it (output channels innermost)."""
    return r(k, c, size, size).permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)


def channel_slice(n, c, h, w, start, channels, fmt=None):
    """A ``[n, channels, h, w]`` channel slice of a larger buffer, as SSH writes into."""
    return torch.zeros(n, c, h, w).contiguous(memory_format=fmt or torch.contiguous_format)[:, start:start + channels]


def cases():
    x, x_cl = r(2, 8, 7, 9), r(2, 8, 7, 9, fmt=CL)
    w3, b = kernel_weight(16, 8, 3), r(16)
    slopes = torch.rand(16)
    yield "conv2d leaky", F.conv2d_bias_act, (x, w3, b, 1, 1, "leaky_relu", 0.1, None, None, None, None,
                                              "ieee", None)
    yield "conv2d channels_last prelu residual", F.conv2d_bias_act, (
        x_cl, w3, b, 2, 1, "prelu", 0.0, slopes, r(2, 16, 4, 5, fmt=CL), torch.rand(2, 16), None, "ieee", None)
    yield "conv2d border bias relu_from no bias", F.conv2d_bias_act, (
        x, w3, None, 1, 1, "leaky_relu", 0.2, None, None, None, r(16, 16), "ieee", 4)
    yield "conv2d bfloat16", F.conv2d_bias_act, (x.bfloat16(), w3.bfloat16(), b, 1, 1, "relu", 0.0, None, None, None,
                                                 None, "ieee", None)
    yield "conv2d out slice", F.conv2d_bias_act_out, (x, w3, b, 1, 1, "relu", 0.0, None, None, None, None,
                                                      "ieee", None, channel_slice(2, 24, 7, 9, 4, 16))
    yield "conv2d out slice channels_last", F.conv2d_bias_act_out, (
        x_cl, w3, b, 1, 1, "identity", 0.0, None, None, None, None, "ieee", None,
        channel_slice(2, 24, 7, 9, 8, 16, CL))
    dw, dw_b = r(8, 1, 3, 3), r(8)
    yield "depthwise", F.depthwise_conv_bias_act, (x, dw, dw_b, 1, "leaky_relu", 0.1, None)
    yield "depthwise channels_last stride 2 prelu", F.depthwise_conv_bias_act, (x_cl, dw, None, 2, "prelu", 0.0,
                                                                                torch.rand(8))
    yield "depthwise out slice", F.depthwise_conv_bias_act_out, (x, dw, dw_b, 2, "relu", 0.0, None,
                                                                 channel_slice(2, 12, 4, 5, 2, 8))
    pw = kernel_weight(16, 8, 1)
    yield "conv_dw", F.conv_dw_fused, (x, dw, dw_b, pw, b, 1, 0.1, 0.1, "ieee", "leaky_relu", "leaky_relu")
    yield "conv_dw channels_last stride 2", F.conv_dw_fused, (x_cl, dw, dw_b, pw, b, 2, 0.0, 0.2, "ieee", "relu",
                                                              "leaky_relu")
    yield "conv_dw out slice", F.conv_dw_fused_out, (x, dw, dw_b, pw, b, 1, 0.1, 0.1, "ieee", "leaky_relu",
                                                     "leaky_relu", channel_slice(2, 20, 7, 9, 4, 16))
    yield "lateral", F.lateral_upsample_add, (x, pw, b, r(2, 16, 4, 5), "leaky_relu", 0.1, None, "ieee")
    yield "lateral channels_last no coarse", F.lateral_upsample_add, (x_cl, pw[:, :, 0, 0], b, None, "relu", 0.0, None,
                                                                      "ieee")
    heads_w = kernel_weight(32, 8, 1)[:, :, 0, 0]
    rows = 7 * 9 * 2
    yield "anchor_heads three outputs", F.anchor_heads, (x, heads_w, r(32), torch.zeros(2, rows, 2),
                                                         torch.zeros(2, rows, 4), torch.zeros(2, rows, 10), 2, 0, True,
                                                         "ieee")
    yield "anchor_heads one output at an offset", F.anchor_heads, (x_cl, heads_w[:8], r(8), torch.zeros(2, rows + 10, 4),
                                                                    None, None, 2, 10, False, "ieee")
    yield "se_squeeze", F.se_squeeze, (x,)
    yield "se_squeeze channels_last", F.se_squeeze, (x_cl,)
    yield "se_excite", F.se_excite, (r(2, 8), r(2, 8), r(2), torch.rand(1), r(8, 2), r(8))
    yield "se_squeeze_excite", F.se_squeeze_excite, (x, r(2, 8), r(2), torch.rand(1), r(8, 2), r(8))
    yield "se_squeeze_excite channels_last", F.se_squeeze_excite, (x_cl, r(2, 8), r(2), torch.rand(2), r(8, 2), r(8))
    yield "se_scale prelu residual", F.se_scale_residual_act, (x, torch.rand(2, 8), r(2, 8, 7, 9), "prelu", 0.0,
                                                               torch.rand(8))
    yield "se_scale channels_last", F.se_scale_residual_act, (x_cl, torch.rand(2, 8), None, "identity", 0.0, None)
    yield "se_scale out slice", F.se_scale_residual_act_out, (x, torch.rand(2, 8), x, "relu", 0.0, None,
                                                              channel_slice(2, 16, 7, 9, 8, 8))


CASES = list(cases())


def fake_layout_problems(op, args) -> list[str]:
    """Where the operator's fake (run on meta tensors, which keep the inputs' strides) lays out an
    output differently from the real kernel: sizes, dtype, or the strides of every dimension longer
    than 1. ``opcheck`` compares fake and real strides only for CUDA tensors in torch 2.11 (for
    every device in 2.13), so on a CPU this is what catches a fake that forgets channels_last."""
    def outputs(out):
        return [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]

    copies = [a.clone(memory_format=torch.preserve_format) if isinstance(a, torch.Tensor) else a for a in args]
    real = outputs(op(*copies))
    fake = outputs(op(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]))
    problems = [] if len(real) == len(fake) else [f"{len(fake)} fake outputs, {len(real)} real"]
    for i, (a, b) in enumerate(zip(real, fake)):
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"output {i}: fake {tuple(b.shape)} {b.dtype}, real {tuple(a.shape)} {a.dtype}")
        elif any(n > 1 and sa != sb for n, sa, sb in zip(a.shape, a.stride(), b.stride())):
            problems.append(f"output {i}: fake strides {b.stride()}, real {a.stride()}")
    return problems


@pytest.mark.parametrize("name, op, args", CASES, ids=[c[0] for c in CASES])
def test_opcheck(name, op, args):
    """Schema (mutations declared), fake tensors (shape, dtype and strides), dynamic shapes."""
    torch.library.opcheck(op, args)
    assert fake_layout_problems(op, args) == []


SPLIT_CASES = [case for case in CASES if case[0].startswith("conv2d") and case[2][1].shape[-1] == 3]  # 3x3: 9 steps


@pytest.mark.parametrize("name, op, args", SPLIT_CASES, ids=[c[0] for c in SPLIT_CASES])
def test_opcheck_split_k(name, op, args, monkeypatch):
    """The conv operators when the launch splits its reduction (``conv2d.FORCE_SPLIT_K``): a
    workspace and a second kernel (the reduce) in the body, ``out=`` slices included."""
    monkeypatch.setattr(conv2d, "FORCE_SPLIT_K", 3)
    with fused.recording() as rec:
        torch.library.opcheck(op, args)
    assert rec.kernel_counts()["conv2d_splitk_reduce"] > 0


def test_every_operator_is_checked_and_named_after_its_launcher():
    checked = {str(op).removeprefix("facefuse.") for _, op, _ in CASES}
    assert checked == set(ops.OPS), set(ops.OPS) ^ checked
    assert ops.KIND == ("custom_op" if fused.runtime.INTERPRETED else "triton_op")


def test_a_wrong_fake_implementation_is_caught():
    """A fake that forgets channels_last fails test_opcheck on every torch: by the fake-layout check
    on any device, and by opcheck itself where it compares the strides of the tensors' device
    (CUDA only in torch 2.11)."""

    @torch.library.custom_op("facefuse_test::contiguous_fake", mutates_args=())
    def op(x: torch.Tensor) -> torch.Tensor:
        return conv2d.conv2d_bias_act(x, kernel_weight(4, 8, 1))

    op.register_fake(lambda x: x.new_empty((x.shape[0], 4, *x.shape[2:])))
    args = (r(1, 8, 3, 3, fmt=CL),)
    assert [p.split(":")[1].strip().split(" (")[0] for p in fake_layout_problems(op, args)] == ["fake strides"]
    assert fake_layout_problems(op, (r(1, 8, 3, 3),)) == []  # the same fake is right for NCHW input


def test_the_operator_records_the_launch_as_the_launcher_does():
    x, w = r(1, 8, 5, 5), kernel_weight(4, 8, 3)
    with fused.recording() as rec:
        direct = conv2d_bias_act(x, w, padding=1)
        through_op = F.conv2d_bias_act(x, w, None, 1, 1, "identity", 0.0, None, None, None, None, "ieee", None)
    assert rec.kernel_counts() == {"conv2d_bias_act": 2}
    assert torch.equal(direct, through_op)


def test_launchers_under_torch_compile_record_the_ops_and_give_the_eager_answer():
    torch._dynamo.reset()
    x, w, b, coarse = r(2, 8, 6, 6, fmt=CL), kernel_weight(16, 8, 3), r(16), r(2, 16, 3, 3)
    dw, lateral = r(8, 1, 3, 3), kernel_weight(16, 16, 1)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def run(x):
        y = conv2d_bias_act(x, w, b, padding=1, activation="prelu", slope=torch.rand(16))
        buffer = x.new_zeros(2, 24, 6, 6)
        depthwise_conv_bias_act(x, dw, out=buffer[:, 16:], activation="relu")
        return lateral_upsample_add(y, lateral, b, coarse), buffer

    torch.manual_seed(0)
    eager = run(x)
    torch.manual_seed(0)
    compiled = torch.compile(run, fullgraph=True, backend=backend)(x)
    for a, e in zip(compiled, eager):
        assert torch.equal(a, e)
        assert a.stride() == e.stride()
    targets = {str(n.target).removesuffix(".default") for n in graphs[0].graph.nodes if n.op == "call_function"}
    assert {"facefuse.conv2d_bias_act", "facefuse.depthwise_conv_bias_act_out", "facefuse.lateral_upsample_add"} <= targets


def test_launcher_errors_are_the_same_under_torch_compile():
    """Without fullgraph the error is ours; with fullgraph=True Dynamo wraps it, message included."""
    torch._dynamo.reset()
    w = kernel_weight(16, 8, 3)

    def run(x):
        return conv2d_bias_act(x, w, padding=1)

    message = "weight expects 8 input channels but x has 5"
    with pytest.raises(ValueError, match=message):
        run(r(1, 5, 6, 6))
    with pytest.raises(ValueError, match=message):
        torch.compile(run, backend="eager")(r(1, 5, 6, 6))
    with pytest.raises(Exception, match=message):
        torch.compile(run, fullgraph=True, backend="eager")(r(1, 5, 6, 6))
    with pytest.raises(Exception, match="unsupported dtype torch.float64"):
        torch.compile(run, fullgraph=True, backend="eager")(r(1, 8, 6, 6, dtype=torch.float64))
