"""The benchmark routine on the CPU: bandwidth, correctness before timing, results with provenance."""

import copy
import csv
import json

import pytest
import torch

import fused
import fused.measure as M
import reference as R
from fused.measure import benchmark as B
from fused.cli import main

ON_GPU = torch.cuda.is_available() and not fused.runtime.INTERPRETED


@pytest.fixture(autouse=True)
def ceilings_cache(tmp_path, monkeypatch):
    """The command's measured ceilings go to a temporary cache, never to the real ~/.cache/facefuse."""
    monkeypatch.setenv("FACEFUSE_CACHE", str(tmp_path / "cache"))


def test_bandwidth_is_positive_and_cached():
    gbps = B.measure_bandwidth("cpu", nbytes=8 * 2**20, repeats=3)
    assert gbps > 0 and gbps == B.measure_bandwidth("cpu", nbytes=8 * 2**20, repeats=3)


def small_case(make_fused=None, name="conv_bn 4->8"):
    """A tiny conv_bn case; ``make_fused(block)`` gives the fused_fn (default: fused.fuse of a copy)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        block = R.randomize_batchnorm(R.conv_bn(4, 8, 1, 0.1), seed=2).eval()
    x = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    fused_fn = fused.fuse(copy.deepcopy(block)) if make_fused is None else make_fused(block)
    return B.BenchCase(
        name=name, family="conv_bn", shape="1x4x6x6", fused_fn=fused_fn, reference_fn=block, x=x,
        bytes_moved=(4 * 36 + 8 * 36 + 8 * 36 + 32) * 4, flops=2 * 36 * 8 * 36, reduction_length=36,
    )


@pytest.fixture(scope="module")
def results():
    good = small_case()
    wrong = small_case(lambda block: (lambda x: block(x) * 1.01), name="deliberately wrong")
    unfused = small_case(lambda block: block, name="reference only")  # right answer, but no kernel ran
    return B.run_cases([good, wrong, unfused], "cpu", warmup=0, repeats=2, compile_mode=None)


def test_good_case_is_checked_then_timed(results):
    good = results[0]
    assert good["status"] == "ok" and good["max_abs_error"] < 1e-5 and good["max_abs_error_cl"] < 1e-5
    assert "conv2d_bias_act" in good["kernels"]
    assert good["eager_ms"] > 0 and good["eager_cl_ms"] > 0 and good["timing_method"] == "wall-clock"
    assert good["compile_ms"] is None  # compile disabled here
    if not ON_GPU:  # interpreter timings are never speedups
        assert good["fused_ms"] is None and good["speedup_eager"] is None
        assert "interpreter" in good["note"]
    assert good["roofline_gbps"] > 0


def test_wrong_fused_fn_fails_and_is_not_timed(results):
    wrong = results[1]
    assert wrong["status"] == "failed" and "out of tolerance" in wrong["error"]
    assert all(wrong[c] is None for c in B.TIME_COLUMNS)


def test_fused_fn_that_runs_no_kernel_is_not_timed(results):
    unfused = results[2]
    assert unfused["status"] == "fallback" and all(unfused[c] is None for c in B.TIME_COLUMNS)


def test_results_files_carry_the_environment(results, tmp_path):
    paths = B.write_results(results, tmp_path, device="cpu", settings={"family": "conv_bn"})
    data = json.loads(open(paths["json"]).read())
    assert {"date", "torch", "triton", "gpu", "driver", "device"} <= set(data["environment"])
    assert data["environment"]["torch"] == torch.__version__
    assert [r["case"] for r in data["rows"]] == ["conv_bn 4->8", "deliberately wrong", "reference only"]
    assert data["families"] == ["conv_bn"]
    assert data["bandwidth_gbps"] > 0
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[0]["torch"] == torch.__version__ and rows[0]["date"]
    assert rows[1]["status"] == "failed" and rows[1]["eager_ms"] == ""
    with open(paths["chart"], "rb") as f:
        assert f.read(4) == b"\x89PNG"


def test_write_results_only_writes(results, tmp_path, monkeypatch):
    """Writing results measures nothing: the bandwidth it records is the one run_cases used."""
    def no_measuring(*args, **kwargs):
        raise AssertionError("write_results measured the copy bandwidth")

    monkeypatch.setattr(M.ceilings, "copy_bandwidth", no_measuring)
    monkeypatch.setattr(B, "copy_bandwidth", no_measuring)
    paths = B.write_results(results, tmp_path, device="cpu")
    data = json.loads(open(paths["json"]).read())
    assert data["bandwidth_gbps"] == results[0]["roofline_gbps"] > 0 and data["ceilings"] is None


def test_compile_failure_is_recorded_not_raised():
    [r] = B.run_cases([small_case()], "cpu", warmup=0, repeats=1, compile_mode="no-such-mode")
    assert r["status"] == "ok" and r["compile_ms"] is None and r["compile_error"]


def test_conv_bn_cases():
    cases = B.family_cases("conv_bn", size=32, batches=(1, 2), dtype=torch.float32, device="cpu")
    assert "conv_bn" in B.families()
    assert len({c.name for c in cases}) == len(cases)  # one case per distinct block, weight and input shape
    assert {c.info["block_type"] for c in cases} == {"conv_bn", "conv_bn_no_relu", "conv_bn1X1"}
    stem = next(c for c in cases if c.shape == "1x3x32x32")  # conv_bn(3, 8, 2)
    assert stem.flops == 2 * 16 * 16 * 8 * 3 * 9
    assert stem.bytes_moved == (3 * 32 * 32 + 8 * 16 * 16 + 8 * 27 + 4 * 8) * 4
    assert stem.reduction_length == 27
    assert any(c.shape == "2x3x32x32" for c in cases)


@pytest.mark.skipif(ON_GPU, reason="the CPU path of the command")
def test_bench_command_on_cpu(tmp_path, capsys, monkeypatch):
    from fused.measure import ceilings

    monkeypatch.setattr(ceilings, "machine_load", lambda device: None)  # idle, so the ceilings are cached
    args = ["bench", "--allow-cpu", "--family", "conv_bn", "--size", "32", "--compile-mode", "none",
            "--repeats", "1", "--warmup", "0", "--quiet", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "conv_bn 3->8 k3 s2 1x3x32x32" in out and "not speedups" in out
    assert (tmp_path / "bench.json").is_file() and (tmp_path / "bench.png").is_file()
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["ceilings"]["copy_gbps"] == data["bandwidth_gbps"] > 0 and data["ceilings"]["matmul_flops"] > 0
    assert (tmp_path / "cache" / "ceilings.json").is_file()  # measured once, cached in $FACEFUSE_CACHE


def _expand(models):
    return {m for name in models for m in (M.models.RETINAFACE_MODELS if name == "retinaface" else (name,))}


@pytest.mark.parametrize("name", list(M.models.MODELS))
def test_families_cover_every_fused_block_type_of_each_model(name):
    """Every block type that fused.fuse swaps in a model (as the profiler finds its blocks) is
    benchmarked by a family drawn from that model: registering a fused module without its
    family (one register_family line) fails here."""
    model = M.models.build_model(name)
    fused_types = {kind for _, _, kind, row in M.blocks.find_rows(model) if row == "block" and kind in fused.REGISTRY}
    root = R.block_type(model) or type(model).__name__  # as fused.fuse names it
    if root in fused.REGISTRY:
        fused_types.add(root)  # also fused as a whole (ArcFace: stem and head fused above block level)
    covered = {t for f in B.FAMILIES.values() if name in _expand(f.models) for t in f.block_types}
    assert fused_types <= covered, f"{name}: no benchmark family for {sorted(fused_types - covered)}"



def test_depthwise_family_times_the_depthwise_kernel_alone():
    """The depthwise family: the first half of every distinct conv_dw block of RetinaFace
    mobile0.25 (depthwise 3x3, BN, LeakyReLU) at its real shape, against the depthwise kernel
    alone; checked against float64 first, and on the CPU never timed."""
    assert "depthwise" in B.families()
    cases = B.family_cases("depthwise", size=32, batches=(1,), dtype=torch.float32, device="cpu")
    net = M.models.build_model("retinaface")
    blocks = {(b[0].in_channels, b[0].stride[0]) for b in net.modules() if R.block_type(b) == "conv_dw"}
    assert len(blocks) == 9 and {(c.x.shape[1], c.reference_fn[0].stride[0]) for c in cases} == blocks
    assert len({c.name for c in cases}) == len(cases)  # the five identical 128->128 blocks are one case
    first = next(c for c in cases if c.shape == "1x8x16x16")  # the stem halves 32x32
    assert first.name == "depthwise 8->8 k3 s1 1x8x16x16"
    assert [type(m) for m in first.reference_fn] == [torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.LeakyReLU]
    assert first.reference_fn[0].groups == 8 and first.info["block_type"] == "conv_dw"
    assert first.flops == 2 * 9 * 8 * 16 * 16 and first.reduction_length == 9
    assert first.bytes_moved == (2 * 8 * 16 * 16 + 8 * 9 + 4 * 8) * 4

    wrong = copy.copy(first)
    wrong.fused_fn = copy.copy(first.fused_fn)
    wrong.fused_fn.slope = 0.2  # the conv_dw's LeakyReLU has 0.1
    strided = next(c for c in cases if c.reference_fn[0].stride[0] == 2)
    ok, ok_strided, bad = B.run_cases([first, strided, wrong], "cpu", warmup=0, repeats=1, compile_mode=None)
    for r in (ok, ok_strided):
        assert r["status"] == "ok", r["error"]
        assert r["kernels"] == "depthwise_conv_bias_act"  # not conv_dw_fused, not the pointwise conv
        if not ON_GPU:
            assert r["fused_ms"] is None and r["fused_cl_ms"] is None and "interpreter" in r["note"]
    assert bad["status"] == "failed" and all(bad[c] is None for c in B.TIME_COLUMNS)

def test_register_family_is_one_line(monkeypatch):
    monkeypatch.setattr(B, "FAMILIES", dict(B.FAMILIES))
    family = B.register_family("test_fpn", ("retinaface",), ("FPN",), "the FPN")
    assert B.FAMILIES["test_fpn"] is family and family.block_types == ("FPN",)
    assert ("test_fpn" in B.families()) == ("FPN" in fused.REGISTRY)


def test_block_cases_take_list_inputs_and_several_outputs():
    """The FPN takes a list of three maps and returns three: block_cases and run_cases handle it
    like any block (its conv_bn blocks are fused, or the whole FPN once it has a fused module)."""
    net = M.models.build_model("retinaface")
    x = M.models.example_input("retinaface", (64, 64), 1)
    [case] = B.block_cases("fpn", net, ("FPN",), x, batches=(1,))
    assert isinstance(case.x, list) and case.shape == "1x64x8x8;1x128x4x4;1x256x2x2"
    assert case.name == "FPN 64->64 k1 s1 1x64x8x8+1x128x4x4+1x256x2x2"
    maps_in = 64 * 64 + 128 * 16 + 256 * 4
    maps_out = 64 * (64 + 16 + 4)
    assert case.bytes_moved == (maps_in + maps_out) * 4 + M.tensors.state_bytes(case.reference_fn)
    [r] = B.run_cases([case], "cpu", warmup=0, repeats=1, compile_mode=None)
    assert r["status"] == "ok", r["error"]
    assert r["max_abs_error"] < 1e-4 and r["kernels"]  # Triton kernels ran (the FPN's own, or its conv_bn's)


def test_recorded_results_are_readable(results, tmp_path, monkeypatch):
    from fused import cli
    from fused.measure import results as recorded

    monkeypatch.chdir(tmp_path)  # recordings go to results/ of the project folder: here, the current directory
    paths = B.write_results(results, tmp_path / "out", device="cpu")
    dest = cli.record_results(paths["json"])
    assert dest.startswith(str(tmp_path / "results")) and dest.endswith(".json")
    [run] = recorded.recorded("conv_bn", tmp_path / "results")
    assert run["rows"][0]["case"] == "conv_bn 4->8" and "speedup_eager" in run["rows"][0]


def test_gpu_only_code_path_runs(monkeypatch, tmp_path):
    """Exercise the fused-timing branch (GPU only) on this machine; the interpreter timings are
    thrown away, never reported."""
    monkeypatch.setattr(fused.measure.timing, "times_fused", lambda device: True)
    [r] = B.run_cases([small_case()], "cpu", warmup=0, repeats=1, compile_mode=None)
    assert r["status"] == "ok" and r["fused_ms"] > 0 and r["fused_cl_ms"] > 0
    assert r["fused_best_layout"] in ("nchw", "channels_last")
    assert r["speedup_eager"] > 0 and r["speedup_eager_cl"] > 0 and r["speedup_compile"] is None
    assert r["fused_gbps"] > 0 and r["roofline_pct"] > 0
    paths = B.write_results([r], tmp_path, device="cpu")
    with open(paths["chart"], "rb") as f:
        assert f.read(4) == b"\x89PNG"


def test_gpu_only_fused_compile_path_runs(monkeypatch):
    """``fused_compile_ms`` (GPU only): torch.compile of the fused path, checked before it is timed;
    Dynamo's "eager" backend stands in for Inductor to keep this fast. A wrong compiled result is
    not timed."""
    monkeypatch.setattr(fused.measure.timing, "times_fused", lambda device: True)
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, **kw: real_compile(fn, backend="eager", **kw))
    [r] = B.run_cases([small_case()], "cpu", warmup=0, repeats=1, compile_mode="default", fused_compile=True)
    assert r["status"] == "ok" and r["fused_compile_error"] is None, r["note"]
    assert r["fused_compile_ms"] > 0 and r["compile_ms"] > 0
    assert r["compile_s"] > 0  # what the compile itself cost (gpu-check --quick weighs it against its budget)
    assert r["speedup_fused_compile_vs_compile"] == pytest.approx(r["compile_ms"] / r["fused_compile_ms"])

    def wrong_when_compiled(block):
        model = fused.fuse(copy.deepcopy(block))
        return lambda x: model(x) * (1.01 if torch.compiler.is_compiling() else 1.0)

    wrong = small_case(wrong_when_compiled, name="wrong only when compiled")
    [w] = B.run_cases([wrong], "cpu", warmup=0, repeats=1, compile_mode="default", fused_compile=True)
    assert w["fused_compile_ms"] is None and "tolerance" in w["fused_compile_error"]
