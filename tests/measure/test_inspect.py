"""``facefuse inspect``: the dry run, the JIT specialisation, the analysis of compiler output, the CLI.

The slow checks that compile every default variant are in ``test_inspect_baseline.py``.
"""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

import fused
from fused import runtime
from fused.kernels import conv2d
from fused.kernels.common import SM_COUNT, config_key
from fused.kernels.conv2d import conv2d_bias_act, conv2d_plan
from fused.kernels.heads import anchor_heads_plan
from fused import cli
from fused.measure.inspect import ARCHS, Config, analyse, occupancy, record_launches, report, specialize
from fused.measure.inspect import compile as C

ROOT = Path(__file__).resolve().parents[2]


# -- the dry-run hook and the specialisation ------------------------------------------------------


def _recorded_conv(x, weight, **kwargs):
    calls = []
    with runtime.recording_launches(lambda kernel, grid, args, kw: calls.append((kernel, grid, args, kw))):
        out = conv2d_bias_act(x, weight, **kwargs)
    return calls, out


def test_recording_launches_runs_nothing_and_restores_launching():
    x, w = torch.randn(1, 4, 6, 6), torch.randn(8, 4, 3, 3)
    zeros = torch.zeros(1, 8, 6, 6)
    calls, out = _recorded_conv(x, w, padding=1, out=zeros)
    assert len(calls) == 1 and calls[0][0] is conv2d.conv2d_bias_act_kernel
    assert calls[0][1] == conv2d_plan(1, 4, 6, 6, 8, 3, 1, 1).grid
    assert out is zeros and not out.any()  # recorded, not run
    fused.assert_close(conv2d_bias_act(x, w, padding=1), torch.nn.functional.conv2d(x, w, padding=1))


def test_meta_tensors_pass_the_checks_only_while_recording():
    x, w = torch.empty(1, 4, 6, 6, device="meta"), torch.empty(8, 4, 3, 3, device="meta")
    with pytest.raises(RuntimeError, match="meta tensors"):
        conv2d_bias_act(x, w)
    calls, out = _recorded_conv(x, w)
    assert len(calls) == 1 and out.device.type == "meta" and out.shape == (1, 8, 4, 4)


def _spec(calls):
    kernel, _, args, kwargs = calls[0]
    described = specialize.describe_arguments(kernel, args, kwargs)
    return described, specialize.specialise(kernel, described["args"])


def test_specialisation_follows_the_jit_rules():
    """Ints equal to 1 become constants, ints divisible by 16 and aligned pointers get
    tt.divisibility=16, floats are fp32; a width of 40 is not divisible, a view at a 4-byte offset
    is not aligned."""
    odd = torch.empty(2 * 8 * 40 * 40 + 1)[1:].view(2, 8, 40, 40)
    calls, _ = _recorded_conv(torch.randn(2, 8, 40, 40), torch.randn(8, 8, 3, 3), padding=1, out=odd)
    described, spec = _spec(calls)
    assert spec["signature"]["x_ptr"] == "*fp32" and "x_ptr" in spec["divisible"]
    assert "out_ptr" not in spec["divisible"]  # 4-byte offset
    assert spec["signature"]["W"] == "i32" and "W" not in spec["divisible"]  # 40 % 16 != 0
    assert spec["signature"]["x_stride_w"] == "constexpr" and spec["constexprs"]["x_stride_w"] == 1
    assert "x_stride_w" in spec["ones"] and "padding" in spec["ones"] and "x_stride_h" not in spec["ones"]
    assert spec["signature"]["leaky_slope"] == "fp32"
    assert spec["signature"]["C"] == "i32" and "C" not in spec["divisible"]  # 8
    assert spec["constexprs"]["BLOCK_M"] == calls[0][3]["BLOCK_M"] and "num_warps" in described["options"]
    assert "R" not in spec["ones"] and spec["constexprs"]["R"] == 3  # a constexpr parameter, not an int == 1

    buffer = torch.empty(1, 48, 8, 8)  # a channel slice at 16 channels * 64 floats: aligned
    calls, _ = _recorded_conv(torch.randn(1, 16, 8, 8), torch.randn(32, 16, 3, 3), padding=1, out=buffer[:, 16:])
    _, spec = _spec(calls)
    assert {"C", "K", "out_ptr", "out_stride_n"} <= set(spec["divisible"])
    assert spec["signature"]["out_stride_n"] == "i32" and "W" not in spec["divisible"]


# -- the dry run at GPU shapes (a worker process) -------------------------------------------------


def test_dry_run_takes_the_gpu_decisions_at_real_shapes():
    launches = record_launches([Config("retinaface", (640, 640), 16, "float16")], timeout=600)
    (name, recorded), = launches.items()
    assert name == "retinaface 640x640 b16 float16"
    convs = [launch for launch in recorded if launch["kernel"].endswith(":conv2d_bias_act_kernel")]
    assert convs and all(launch["block"] for launch in recorded)
    assert {launch["block"] for launch in recorded if "anchor_heads" in launch["kernel"]} == {"(model)"}
    for launch in convs:
        a = launch["args"]
        x = a["x_ptr"]["shape"]
        plan = conv2d_plan(x[0], x[1], x[2], x[3], a["K"], a["R"], a["conv_stride"], a.get("padding", 1),
                           channels_last=a["x_ptr"]["stride"][1] == 1, dtype=torch.float16, interpreter=False)
        assert tuple(launch["grid"]) == plan.grid
        assert {k: launch["variant"]["spec"]["constexprs"][k] for k in plan.blocks} == plan.blocks
        assert launch["variant"]["options"] == {"num_warps": plan.num_warps, "num_stages": plan.num_stages}
        assert launch["flops"][0] == 2 * a["pixels"] * a["K"] * a["C"] * a["R"] ** 2
        if "SPLIT_K" in plan.blocks:  # split-K launches its plan, then the reduce (SSH's 20x20 level)
            reduce = recorded[recorded.index(launch) + 1]
            assert launch["candidates"] is None and reduce["kernel"].endswith(":conv2d_splitk_reduce_kernel")
            assert reduce["args"]["SPLIT_K"] == plan.blocks["SPLIT_K"] and reduce["block"] == launch["block"]
            assert reduce["flops"] == [0, a["pixels"] * a["K"] * (plan.blocks["SPLIT_K"] - 1)]
            continue
        # launched through triton.autotune, as on a GPU: the plan first among the configs it times
        assert launch["candidates"][0] == list(config_key(plan)) and len(launch["candidates"]) > 1
    assert sum("SPLIT_K" in launch["variant"]["spec"]["constexprs"] and launch["args"]["SPLIT_K"] > 1
               for launch in convs) == 3
    assert recorded[0]["args"]["x_ptr"]["shape"] == [16, 3, 640, 640]
    heads = [launch for launch in recorded if launch["kernel"].endswith(":anchor_heads_kernel")]
    for launch in heads:  # three levels; the 20x20 one fills the SMs by splitting its columns
        a, c = launch["args"], launch["variant"]["spec"]["constexprs"]
        plan = anchor_heads_plan(*a["x_ptr"]["shape"], a["K"], group=c["V0"] if c["SOFTMAX0"] else 1,
                                 channels_last=a["x_ptr"]["stride"][1] == 1, dtype=torch.float16, interpreter=False)
        assert tuple(launch["grid"]) == plan.grid and plan.grid[0] * plan.grid[1] >= SM_COUNT
    assert len(heads) == 3 and max(launch["grid"][1] for launch in heads) == 2


def _dry_runs(configs, monkeypatch=None, **env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return record_launches(configs, timeout=600)


def test_dry_run_records_the_plan_an_autotuned_launch_starts_from(monkeypatch):
    """In the worker the launchers autotune, as on a GPU: the dry run records the first of the
    configurations triton.autotune would time, which is exactly the launch the plan makes when
    autotuning is off (FACEFUSE_AUTOTUNE=0), for every launch of both models at their real shapes."""
    from fused.measure.inspect import DEFAULT_CONFIGS

    configs = [Config(c["model"], tuple(c["size"]), c["batch"], dtype, precision=precision)
               for c in DEFAULT_CONFIGS
               for dtype, precision in (("float16", "ieee"), ("float32", "tf32"), ("float32", "ieee"))]
    tuned = _dry_runs(configs)
    planned = _dry_runs(configs, monkeypatch, FACEFUSE_AUTOTUNE="0")
    assert tuned.keys() == planned.keys() and len(tuned) == len(configs)
    autotuned = 0
    for name in tuned:
        assert len(tuned[name]) == len(planned[name])
        for t, p in zip(tuned[name], planned[name]):
            assert (t["kernel"], t["grid"], t["variant"]) == (p["kernel"], p["grid"], p["variant"]), name
            assert p["candidates"] is None
            if t["candidates"] is not None:
                autotuned += 1
                c = t["variant"]["spec"]["constexprs"]
                first = [c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_C"], *t["variant"]["options"].values()]
                assert t["candidates"][0] == first and len(t["candidates"]) > 1
    assert autotuned > 100


def test_dry_run_precision_follows_fuse_on_an_h100(monkeypatch):
    """float32 dots get TF32 by default ("auto": what fuse() does on an H100 while
    torch.backends.cudnn.allow_tf32 is on, PyTorch's default), exact products with "ieee" or with
    the flag off; the configuration's name and every dot launch say which."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    auto, ieee = Config("arcface", (128, 128), 2, "float32"), Config("arcface", (128, 128), 2, "float32", precision="ieee")
    assert auto.dot_precision == "tf32" and auto.name.endswith("float32 tf32") and auto.to_json()["precision"] == "tf32"
    assert ieee.name.endswith("float32 ieee") and Config("arcface", (128, 128), 2).dot_precision == "ieee"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert Config("arcface", (128, 128), 2, "float32").dot_precision == "ieee"
    with pytest.raises(ValueError, match="precision must be one of"):
        Config("arcface", (128, 128), 2, "float32", precision="fast")
    launches = record_launches([auto, ieee], timeout=600)
    for config, expected in ((auto, "tf32"), (ieee, "ieee")):
        dots = {la["variant"]["spec"]["constexprs"].get("INPUT_PRECISION") for la in launches[config.name]}
        assert dots - {None} == {expected}


def test_fused_models_keep_activations_channels_last_from_the_first_kernel_on():
    """Every launch after a model's first reads its input channels_last (channel stride 1): the
    stem writes NHWC whatever the user's layout (ArcFace's 1-channel input included)."""
    from fused.measure.inspect import DEFAULT_CONFIGS

    configs = [Config(c["model"], tuple(c["size"]), 1) for c in DEFAULT_CONFIGS if c["batch"] != 16]
    for name, launches in record_launches(configs, timeout=600).items():
        reads = [(la["block"], la["args"]["x_ptr"]) for la in launches if isinstance(la["args"].get("x_ptr"), dict)]
        assert len(reads) > 10, name
        nchw = [block for block, x in reads[1:] if x["stride"][1] != 1 and x["shape"][1] != 1]
        assert not nchw, f"{name}: {nchw}"


# -- reading compiler output ------------------------------------------------------------------------

SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;                                 /* 0x00000a00ff017b82 */
        /*1f80*/              @!P0 BRA 0x34a0 ;                                           /* 0x0000001400448947 */
        /*2c60*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR16][R4.64] ;           /* 0x0 */
        /*2cc0*/               @P5 LDG.E.U16 R125, desc[UR16][R88.64] ;                   /* 0x00000010587d5981 */
        /*2d10*/               @P5 LDG.E.U16 R110, desc[UR16][R116.64] ;                  /* 0x00000010746e5981 */
        /*3440*/                   HGMMA.64x16x16.F32 R32, gdesc[UR8].tnspB, R32, gsb0 ;  /* 0x40200000082079f0 */
        /*3450*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;                        /* 0x00008000000079c5 */
        /*3490*/               @P5 BRA 0x2c60 ;                                           /* 0xfffffff400f05947 */
        /*3650*/              @!P0 LDG.E.128 R11, desc[UR16][R6.64] ;                     /* 0x00000010060b8981 */
        /*3660*/                   STL.64 [R1], R4 ;                                      /* 0x0 */
        /*4210*/                   BRA 0x4210;                                            /* 0xfffffffc00fc7947 */
"""


def test_sass_main_loop_and_its_loads():
    ins = analyse.parse_sass(SASS)
    assert [op for _, op, _ in ins][:3] == ["LDC", "BRA", "LDGSTS.E.BYPASS.128"]
    mix = analyse.opcode_mix(ins)
    assert mix["LDG"] == 3 and mix["HGMMA"] == 1 and mix["STL"] == 1
    assert analyse.loops(ins) == [(0x2c60, 0x3490)]  # BRA 0x4210 at 0x4210 is the end, not a loop
    loop = analyse.main_loop(ins)
    assert loop == (0x2c60, 0x3490)
    loads = analyse.global_loads(ins, loop)
    assert loads == {"ldg_bits": {"16": 2}, "ldgsts": 1, "tma": 0}
    assert analyse.classify_loads(loads, 16) == "cp.async+scalar"
    assert analyse.classify_loads(analyse.global_loads(ins), 16) == "cp.async+scalar"
    assert analyse.classify_loads({"ldg_bits": {"128": 3, "16": 1}, "ldgsts": 0, "tma": 0}, 16) == "vector"
    assert analyse.classify_loads({"ldg_bits": {}, "ldgsts": 0, "tma": 0}, 32) == "none"
    # the loop waits for every wgmma before the next step; with 0x1 one stays in flight
    assert analyse.mma_wait(ins, loop) == "waits"
    overlapped = analyse.parse_sass(SASS.replace("gsb0, 0x0", "gsb0, 0x1"))
    assert analyse.mma_wait(overlapped, loop) == "overlapped"
    assert analyse.mma_wait(ins, None) == "-" and analyse.mma_wait(ins, (0, 0x10)) == "-"


def test_dot_lowering_from_ptx_and_sass():
    ttir = "%1 = tt.dot %a, %b, %c : ..."
    wgmma = "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {...}"
    assert analyse.dot_lowering(ttir, wgmma, Counter(HGMMA=2)) == {"dots": 1, "lowering": "wgmma", "operands": "bf16"}
    mma = "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {...}"
    assert analyse.dot_lowering(ttir, mma, Counter(HMMA=4))["operands"] == "tf32"
    assert analyse.dot_lowering(ttir, "fma.rn.f32", Counter(FFMA=99))["lowering"] == "FMA"
    tcgen = "tcgen05.mma.cta_group::1.kind::tf32 [%r1], %rd2, %rd3, %r4, p;"
    assert analyse.dot_lowering(ttir, tcgen, Counter(UTCHMMA=2)) == {"dots": 1, "lowering": "tcgen05", "operands": "tf32"}
    assert analyse.dot_lowering("tt.load", "", Counter())["lowering"] == "-"


def test_ptxas_log_and_resource_usage():
    log = ("ptxas info    : Function properties for k\n    48 bytes stack frame, 56 bytes spill stores, "
           "60 bytes spill loads\nptxas info    : Used 255 registers, used 1 barriers, 48 bytes cumulative stack size")
    assert analyse.parse_ptxas_log(log) == {"ptxas_registers": 255, "stack_frame": 48, "spill_stores": 56,
                                            "spill_loads": 60}
    dump = " Function k:\n  REG:128 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:720 TEXTURE:0"
    assert analyse.parse_resource_usage(dump) == {"registers": 128, "stack": 0, "shared": 1024, "local": 0}


def test_occupancy_worked_by_hand():
    h100 = ARCHS["sm_90a"]
    # 4 warps x 128 registers: 4096 per warp, 16 warps fit in 64K registers -> 4 programs
    assert occupancy(h100, num_warps=4, registers=128, shared=5 * 1024)[:2] == (4, "registers")
    # 72 registers round up to 2304 per warp: 28 warps -> 7 programs
    assert occupancy(h100, num_warps=4, registers=72, shared=5 * 1024)[:2] == (7, "registers")
    # 40 registers: 64K / 1280 = 51 warps -> 12 programs, but 2048 threads allow 16, 60 KB of shared 3
    assert occupancy(h100, num_warps=4, registers=40, shared=60 * 1024)[:2] == (3, "shared")
    assert occupancy(h100, num_warps=8, registers=32, shared=0)[:2] == (8, "threads")
    assert all(a.source for a in ARCHS.values())


def _row(label, **kw):
    base = dict(config="c", id="v01", kernel="conv2d_bias_act", blocks="b", dtype="fp16", tiles="", constexprs="",
                specialisation="", num_warps=4, num_stages=3, lowering="wgmma", operands="f16", spill_bytes=0,
                label=label)
    base.update(kw)
    return report.Row(**base)


def test_baseline_comparison_fails_on_a_new_spill_or_a_lost_tensor_core():
    old = report.baseline([_row("a"), _row("b", spill_bytes=64)], {}, "sm_90a", {})
    assert report.compare_with_baseline([_row("a"), _row("b", spill_bytes=64)], old) == []
    assert report.compare_with_baseline([_row("b", spill_bytes=32)], old) == []  # fewer spills: fine
    problems = report.compare_with_baseline([_row("a", spill_bytes=8), _row("b", lowering="FMA")], old)
    assert len(problems) == 2 and "spills 8" in problems[0] and "FMA" in problems[1]
    assert "new variant spills" in report.compare_with_baseline([_row("c", spill_bytes=4)], old)[0]
    assert "does not compile" in report.compare_with_baseline([_row("a", error="PTXASError: x")], old)[0]
    pipelined = report.baseline([_row("a", mma_wait="overlapped")], {}, "sm_90a", {})
    assert "waits after each MMA" in report.compare_with_baseline([_row("a", mma_wait="waits")], pipelined)[0]
    assert report.compare_with_baseline([_row("a", mma_wait="overlapped")], pipelined) == []


def test_a_wait_under_another_compiler_is_a_note_naming_both_compilers():
    recorded = report.baseline([_row("a", mma_wait="overlapped")], {}, "sm_90a",
                               {"triton": "3.9.0", "ptxas": "13.4.59", "python": "3.11"})
    assert recorded["versions"] == {"triton": "3.9.0", "ptxas": "13.4.59"}  # every figure's compiler
    waits, notes = [_row("a", mma_wait="waits")], []
    same = report.compare_with_baseline(waits, recorded, {"triton": "3.9.0", "ptxas": "13.4.59"}, notes)
    assert "waits after each MMA" in same[0] and notes == []
    assert report.compare_with_baseline(waits, recorded, {"triton": "3.6.0", "ptxas": "12.8.93"}, notes) == []
    assert "ptxas 12.8.93 here, the baseline's Triton 3.9.0 / ptxas 13.4.59" in notes[0]
    spill = report.compare_with_baseline([_row("a", spill_bytes=8)], recorded, {"triton": "3.6.0", "ptxas": "12.8.93"})
    assert "spills 8" in spill[0]  # a spill counts on every compiler


def test_summary_shares():
    rows = [_row("a", dot_flops=60, flop_share=0.6, spill_bytes=8, flops_below_sms=60, loads="scalar",
                 mma_wait="waits", autotune_configs=4, launches=2),
            _row("b", dot_flops=30, flop_share=0.3, lowering="FMA", operands="fp32 exact"),
            _row("c", other_flops=10, flop_share=0.1, lowering="-", operands="-")]
    s = report.summarise(rows)["c"]
    assert s["share_by_lowering"] == {"FMA (fp32 exact)": 0.3, "no dot": 0.1, "wgmma": 0.6}
    assert s["share_spilling"] == 0.6 and s["share_below_sms"] == 0.6 and s["share_scalar_loads"] == 0.6
    assert s["variants"] == 3 and s["spilling_variants"] == 1
    assert s["share_mma_waits"] == 0.6 and s["autotuned_launches"] == 2


# -- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--model", "all", "--size", "320"], "--size and --batch apply to one model"),
    (["--model", "arcface", "--size", "112"], "takes 128x128 inputs only"),
    (["--show", "cubin"], "--show: unknown cubin"),
    (["--write-baseline", "--dtype", "float32"], "inspect the default set"),
    (["--arch", "sm_75"], "invalid choice"),
])
def test_cli_usage_errors(argv, message, capsys):
    assert cli.main(["inspect", *argv]) == 2
    assert message in capsys.readouterr().err


def test_python_m_fused_inspect_help():
    done = subprocess.run([sys.executable, "-m", "fused", "inspect", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "--write-baseline" in done.stdout


# -- faithful: Triton's own JIT compiles the same kernel ----------------------------------------------

_JIT_CHECK = r"""
import json, sys, torch
import fused
from fused import runtime
from fused.measure.inspect import compile as C, dryrun, specialize
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

class NoGpuDriver:  # what JITFunction.run asks the driver; nothing is launched with warmup=True
    def get_current_target(self): return GPUTarget("cuda", 90, 32)
    def get_current_device(self): return 0
    def get_current_stream(self, device=None): return 0
    def get_active_torch_device(self): return torch.device("meta")
    def get_benchmarker(self): return None  # triton.autotune asks at construction; nothing is timed

driver.set_active(NoGpuDriver())
model, x = dryrun.build_meta_model(dryrun.Config("retinaface", (96, 160), 1, sys.argv[1]))
calls = []
with torch.inference_mode(), runtime.recording_launches(lambda k, g, a, kw: calls.append((k, g, a, kw))):
    model(x)
out = []
for name in ("conv2d_bias_act_kernel", "conv_dw_fused_kernel", "anchor_heads_kernel", "conv2d_splitk_reduce_kernel"):
    k, g, a, kw = next(c for c in calls if c[0].fn.__name__ == name)
    k, g, kw, _ = dryrun.plan_of_autotuned(k, g, a, kw)  # an autotuned launch: the plan it starts from
    jit = k.run(*a, grid=g, warmup=True, **kw)
    variant = dryrun._variant(k, specialize.describe_arguments(k, a, kw))
    out.append([name, jit.hash, C.compile_source(variant, "sm_90a").hash])
print(json.dumps(out))
"""


def test_jit_warmup_compiles_the_same_kernel_hash():
    """Triton's own launch path (JITFunction.run with warmup=True, a driver that only names the
    target) compiles the kernels with the same hash as our specialisation does."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", _JIT_CHECK, "float16"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 4  # a split-K conv's reduce included
    for name, jit_hash, our_hash in results:
        assert jit_hash == our_hash, name


def test_facefuse_inspect_end_to_end(tmp_path):
    """The default inspection (RetinaFace mobile0.25 640x640 b1 and b16 float16, sm_90a; its variants are
    among the CI baseline's, so they come from the compile cache once compiled), one variant's
    SASS and PTX, and the files of --out. Progress goes to stderr, the table to stdout."""
    done = subprocess.run([sys.executable, "-m", "fused", "inspect", "--kernel", "conv2d_bias_act",
                           "--show", "ptx,sass", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dry run retinaface 640x640 b1 float16: 40 launches" in done.stderr  # 6 split-K reduces
    table = done.stdout.split("\n\nv")[0]
    # every dot FLOP on wgmma; the split-K reduces' sums are the "no dot" FLOPs
    assert "retinaface 640x640 b1 float16" in table and "FLOPs by lowering: no dot 0.0%, wgmma 100.0%" in table
    assert max(len(line) for line in table.splitlines()) <= 120
    assert "===== ptx =====" in done.stdout and ".target sm_90a" in done.stdout
    assert "===== sass =====" in done.stdout and "HGMMA" in done.stdout
    saved = json.loads((tmp_path / "inspect.json").read_text())
    assert saved["arch"]["sms"] == 132 and saved["versions"]["triton"]
    assert saved["versions"]["ptxas_path"] == C.ptxas_for(90)  # the ptxas Triton runs for sm_90a
    for config in ("retinaface 640x640 b1 float16", "retinaface 640x640 b16 float16"):
        rows = [r for r in saved["rows"] if r["config"] == config]
        assert len(rows) >= 20 and sum(r["flop_share"] for r in rows) == pytest.approx(1.0)
        assert {r["precision"] for r in rows if r["lowering"] != "-"} == {"ieee"}  # float16 dots
    assert (tmp_path / "inspect.csv").read_text().startswith("config,id,kernel")
    assert (tmp_path / "inspect.png").stat().st_size > 0


def test_compile_variants_with_changes():
    """What a lesson does: take one variant, change it, compile both (the changed one is new)."""
    from fused.measure.inspect import artifact, changed, compile_variants

    launch = next(la for la in record_launches([Config("retinaface", (640, 640), 1, "float16")])[
        "retinaface 640x640 b1 float16"] if la["kernel"].endswith(":conv2d_bias_act_kernel"))
    variant = launch["variant"]
    assert "W" in variant["spec"]["divisible"]  # 640
    narrower = changed(variant, options={"num_warps": 8}, divisible={"W": False})
    assert "W" not in narrower["spec"]["divisible"] and narrower["options"]["num_warps"] == 8
    assert variant["options"]["num_warps"] == 4  # the original is left alone
    with pytest.raises(KeyError, match="no parameter"):
        changed(variant, constexprs={"BLOCK_Q": 1})
    original, other = compile_variants([variant, narrower], timeout=1800)
    assert original["lowering"] == other["lowering"] == "wgmma" and original["key"] != other["key"]
    assert "HGMMA" in artifact(other["key"], "sass")


def test_spill_figures_do_not_depend_on_tritons_own_cache(tmp_path, monkeypatch):
    """With Triton's kernel cache warm, triton.compile skips ptxas and prints no log; the figures
    must still come from the ptxas Triton runs (each compile gets a fresh Triton cache): a cold and
    a warm compile of one variant report the same registers, spills and ptxas."""
    from fused.measure.inspect import compile_variants

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))  # shared by both compiles below
    launch = next(la for la in record_launches([Config("retinaface", (640, 640), 1, "float16")])[
        "retinaface 640x640 b1 float16"] if la["kernel"].endswith(":conv2d_bias_act_kernel"))
    cold, = compile_variants([launch["variant"]], cache=tmp_path / "a", timeout=1800)
    warm, = compile_variants([launch["variant"]], cache=tmp_path / "b", timeout=1800)
    assert cold["compiled"] and warm["compiled"] and "error" not in cold
    figures = ("ptxas_registers", "spill_stores", "spill_loads", "stack_frame", "registers", "stack", "ptxas")
    assert {k: cold[k] for k in figures} == {k: warm[k] for k in figures}
    assert cold["ptxas_registers"] == cold["registers"] and cold["spill_stores"] is not None
    assert cold["ptxas"] == C.tool_version(C.ptxas_for(90))


def test_ptxas_is_the_one_triton_runs():
    nvidia = pytest.importorskip("triton.backends.nvidia.compiler")
    get = getattr(nvidia, "get_ptxas", None)
    if get is None:
        pytest.skip("this Triton has no get_ptxas")
    for capability in (80, 90, 100):
        try:
            tool = get(capability)
        except TypeError:
            tool = get()
        assert C.ptxas_for(capability) == getattr(tool, "path", tool)
