"""The kernel families' shared conventions: public launch plans, one precision rule, constexpr activations."""

import inspect

import pytest
import torch

import fused
from fused.kernels import common, conv2d, depthwise, fpn, heads
from fused.kernels import squeeze_excite as se
from fused.teaching import watch_launches

KERNELS = [conv2d.conv2d_bias_act_kernel, conv2d.conv2d_splitk_reduce_kernel, depthwise.depthwise_conv_bias_act_kernel, depthwise.conv_dw_fused_kernel,
           fpn.lateral_upsample_add_kernel, heads.anchor_heads_kernel, se.se_squeeze_partial_kernel,
           se.se_excite_kernel, se.se_scale_residual_act_kernel]


def test_plans_do_not_depend_on_the_machine():
    """The GPU plan is the same on every machine, and differs from the interpreter's on big maps."""
    gpu = se.se_squeeze_plan(1, 64, 64, 64, interpreter=False)
    assert (gpu.splits, gpu.programs) == (64, 128)  # what lesson 03 shows
    assert se.se_squeeze_plan(1, 64, 64, 64, interpreter=True).splits == 8
    plan = conv2d.conv2d_plan(1, 64, 80, 80, 64, 3, 1, 1, interpreter=False)  # NCHW: scalar input loads
    assert plan.blocks == {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_C": 32} and plan.grid == (100, 2)
    assert conv2d.conv2d_plan(1, 64, 80, 80, 64, 3, 1, 1, interpreter=True).blocks["BLOCK_M"] == 1024
    assert depthwise.depthwise_plan(1, 128, 40, 40, channels_last=True, interpreter=False).blocks == \
        {"BLOCK_M": 32, "BLOCK_C": 64}
    assert depthwise.conv_dw_fused_plan(16, 128, 40, 40, 256, dtype=torch.float16, interpreter=False).grid == (400, 1)
    assert fpn.lateral_upsample_add_plan(1, 64, 80, 80, 64, interpreter=False).grid == (100, 2)
    assert heads.anchor_heads_plan(1, 64, 80, 80, 32, interpreter=False).grid == (100, 2)  # 64 pixels, 16 columns


def test_se_excite_fills_the_sms_at_small_batches():
    """ArcFace-SE's excite at batch 64 and 16 (C = 64 ... 512, C/16 hidden units): spans of channels
    so that every launch has at least one program per SM on a GPU; one program per sample in the
    interpreter, and on a GPU once the batch alone fills the SMs."""
    for batch in (16, 64):
        for channels in (64, 128, 256, 512):
            plan = se.se_excite_plan(batch, channels, channels // 16, interpreter=False)
            assert plan.programs >= common.SM_COUNT and plan.grid[0] == batch
            assert se.se_excite_plan(batch, channels, channels // 16, interpreter=True).grid == (batch, 1)
    assert se.se_excite_plan(256, 512, 32, interpreter=False).grid == (256, 1)
    assert se.se_excite_plan(1, 512, 32, interpreter=False).grid == (1, se.MAX_EXCITE_SPANS)


# MobileNet0.25's conv_dw blocks at 640x640: (C, K, stride, input size).
MOBILENET_CONV_DW = [(8, 16, 1, 320), (16, 32, 2, 320), (32, 32, 1, 160), (32, 64, 2, 160), (64, 64, 1, 80),
                     (64, 128, 2, 80), (128, 128, 1, 40), (128, 256, 2, 40), (256, 256, 1, 20)]


@pytest.mark.parametrize("dtype, precision", [(torch.float16, "ieee"), (torch.bfloat16, "ieee"),
                                              (torch.float32, "tf32"), (torch.float32, "ieee")])
@pytest.mark.parametrize("channels_last", [True, False])
def test_conv_dw_fused_computes_the_depthwise_step_once_per_pixel(dtype, precision, channels_last):
    """One program covers every output channel (up to 256), so no program repeats another's
    depthwise work, unless that leaves SMs idle: then K = 256 takes two 128-wide tiles. The
    tiles are those the compiler showed spill-free on sm_90a: 16 input channels per step, 64
    pixels on tensor cores, 32 with 128 or more exact fp32 columns; 4 warps for channels_last
    tiles up to 128 wide (2 or more programs per SM), else 8."""
    for C, K, stride, size in MOBILENET_CONV_DW:
        for batch in (1, 16):
            plan = depthwise.conv_dw_fused_plan(batch, C, size, size, K, stride, dtype=dtype, precision=precision,
                                                channels_last=channels_last, interpreter=False)
            fma_wide = dtype == torch.float32 and precision == "ieee" and K >= 128
            assert plan.blocks["BLOCK_C"] == 16 and plan.blocks["BLOCK_M"] == (32 if fma_wide else 64)
            one_tile = plan.grid[0] >= common.SM_COUNT or K <= 128
            assert plan.blocks["BLOCK_N"] == (max(K, 16) if one_tile else 128)
            assert plan.grid[1] == (1 if one_tile else 2)
            assert plan.num_warps == (4 if channels_last and plan.blocks["BLOCK_N"] <= 128 else 8)
    small = depthwise.conv_dw_fused_plan(16, 256, 20, 20, 256, dtype=torch.float16, interpreter=False)
    assert small.grid == (100, 2) and small.programs >= common.SM_COUNT  # mobile0.25's 20x20 level at batch 16
    big = depthwise.conv_dw_fused_plan(64, 256, 20, 20, 256, dtype=torch.float16, interpreter=False)
    assert big.grid == (400, 1)  # enough programs: the depthwise step once
    assert depthwise.conv_dw_fused_plan(16, 256, 20, 20, 256, dtype=torch.float16, interpreter=True).grid[1] == 1
    assert depthwise.conv_dw_fused_plan(1, 512, 8, 8, 512, interpreter=False).grid[1] == 4  # two tiles of 256, split
    assert depthwise.conv_dw_fused_plan(4, 512, 32, 32, 512, interpreter=False).grid == (128, 2)


def test_launchers_launch_their_plan():
    x, w, b = torch.randn(1, 3, 40, 30), torch.randn(8, 3, 3, 3), torch.randn(8)
    with watch_launches(conv2d, "conv2d_bias_act_kernel") as launches:
        conv2d.conv2d_bias_act(x, w, b, stride=2, padding=1)
    plan = conv2d.conv2d_plan(1, 3, 40, 30, 8, 3, 2, 1)
    assert launches == [(plan.grid, plan.blocks)]
    with watch_launches(se, "se_squeeze_partial_kernel") as launches:
        se.se_squeeze(torch.randn(1, 16, 16, 32))
    plan = se.se_squeeze_plan(1, 16, 16, 32)
    assert launches == [(plan.partial.grid, plan.partial.blocks)] and plan.splits > 1
    x = torch.randn(1, 8, 9, 7, dtype=torch.float16)
    with watch_launches(depthwise, "conv_dw_fused_kernel") as launches:
        depthwise.conv_dw_fused(x, torch.randn(8, 1, 3, 3, dtype=x.dtype), torch.zeros(8), torch.randn(200, 8, dtype=x.dtype),
                                torch.zeros(200), stride=2)
    plan = depthwise.conv_dw_fused_plan(1, 8, 9, 7, 200, 2, dtype=torch.float16)
    assert launches == [(plan.grid, plan.blocks)] and plan.blocks["BLOCK_N"] == 256


@pytest.mark.parametrize("launch", [
    lambda x: conv2d.conv2d_bias_act(x, torch.randn(4, 8, 1, 1, dtype=x.dtype), precision="tf32"),
    lambda x: fpn.lateral_upsample_add(x, torch.randn(4, 8, dtype=x.dtype), torch.zeros(4, dtype=x.dtype),
                                       precision="tf32"),
    lambda x: heads.anchor_heads(x, torch.randn(4, 8, dtype=x.dtype), torch.zeros(4, dtype=x.dtype),
                                 [torch.empty(1, 32, 2, dtype=x.dtype)], anchors=2, precision="tf32"),
    lambda x: depthwise.conv_dw_fused(x, torch.randn(8, 1, 3, 3, dtype=x.dtype), torch.zeros(8, dtype=x.dtype),
                                      torch.randn(4, 8, dtype=x.dtype), torch.zeros(4, dtype=x.dtype),
                                      precision="tf32"),
], ids=["conv2d", "fpn", "heads", "conv_dw_fused"])
def test_tf32_on_half_inputs_is_an_error_in_every_family(launch):
    """One behaviour: TF32 applies to float32 only, and asking for it on float16 is an error, never
    silently replaced by exact products."""
    with pytest.raises(ValueError, match="precision='tf32' applies to float32 inputs only"):
        launch(torch.randn(1, 8, 4, 4, dtype=torch.float16))


def test_kernels_follow_one_convention():
    for kernel in KERNELS:
        names = list(inspect.signature(kernel.fn).parameters)
        source = inspect.getsource(kernel.fn)
        assert not [n for n in names if n.startswith("stride_") or n in ("INT64", "PRECISION")], kernel.fn.__name__
        assert "ACTIVATION == 3" not in source and "ACTIVATION == 1" not in source
        assert not kernel.fn.__name__.startswith("_")
    assert all(isinstance(code, int) for code in common.ACTIVATIONS.values())
    assert common.PRELU == common.ACTIVATIONS["prelu"]


def test_device_is_where_kernels_take_tensors():
    assert fused.device().type == ("cpu" if fused.runtime.INTERPRETED else "cuda")
