"""The block-level profiler: one row per block, every conv covered, counts checked by hand, files."""

import dataclasses
import json

import pytest
import torch
from torch import nn

import fused
import fused.measure as M
import reference as R
from fused.measure.ceilings import Ceilings

ON_GPU = torch.cuda.is_available() and not fused.runtime.INTERPRETED
F32 = 4  # bytes per float32

#: Made-up ceilings (copy 10 GB/s, matmul 100 GFLOP/s: ridge 10 FLOP/B), so tests never measure or cache.
FAKE_CEILINGS = Ceilings(device="cpu", device_name="test CPU", torch=torch.__version__, copy_gbps=10.0,
                         matmul_flops=100e9, matmul_dtype="float32", matmul_side=1024, copy_bytes=2**26,
                         method="wall-clock", date="2025-01-01T00:00:00+00:00")

RETINAFACE_BLOCKS = (
    [f"body.stage1.{i}" for i in range(6)] + [f"body.stage2.{i}" for i in range(6)]
    + [f"body.stage3.{i}" for i in range(2)] + ["fpn", "ssh1", "ssh2", "ssh3"]
    + [f"{head}.{i}" for head in ("BboxHead", "ClassHead", "LandmarkHead") for i in range(3)]
)


def retinaface_64():
    model = R.randomize_batchnorm(R.retinaface(seed=0))
    return model, torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def retina_profile():
    model, x = retinaface_64()
    return M.profiler.profile_model(model, x, warmup=1, repeats=2, fused=False, device="cpu", ceilings=FAKE_CEILINGS)


def header(prof) -> str:
    return next(line for line in prof.table().splitlines() if line.startswith("path"))


def covering_rows(profile, module_path):
    return [r.path for r in profile.blocks() if module_path == r.path or module_path.startswith(r.path + ".")]


def test_one_row_per_block(retina_profile):
    blocks = retina_profile.blocks()
    assert sorted(r.path for r in blocks) == sorted(RETINAFACE_BLOCKS)
    assert all(r.kind == "block" for r in blocks)  # nothing with compute lies outside RetinaFace's blocks
    types = {r.path: r.block_type for r in blocks}
    assert types["body.stage1.0"] == "conv_bn"
    assert types["body.stage2.3"] == "conv_dw"
    assert (types["fpn"], types["ssh2"], types["ClassHead.1"]) == ("FPN", "SSH", "ClassHead")
    assert [r.kind for r in retina_profile.rows[-3:]] == ["sum", "outside", "total"]
    assert [r.path for r in retina_profile.rows[-3:]] == [M.rows.SUM, M.rows.OUTSIDE, M.rows.TOTAL]


def test_every_conv_belongs_to_exactly_one_row(retina_profile):
    model, _ = retinaface_64()
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 56
    for name in convs:
        assert len(covering_rows(retina_profile, name)) == 1, name


def test_flops_and_bytes_by_hand(retina_profile):
    stem = retina_profile.row("body.stage1.0")  # conv_bn(3, 8, stride 2) on 1x3x64x64
    assert stem.input_shapes == "1x3x64x64" and stem.output_shapes == "1x8x32x32"
    assert stem.flops == 2 * 32 * 32 * 8 * 3 * 9
    state = 8 * 3 * 9 + 4 * 8  # conv weight + BN weight, bias, running mean, running var
    assert stem.min_bytes == (3 * 64 * 64 + 8 * 32 * 32 + state) * F32
    assert stem.parameters == 8 * 3 * 9 + 2 * 8
    x, y = 3 * 64 * 64, 8 * 32 * 32  # eager: conv (x → y), BN (y → y), LeakyReLU (y → y)
    assert stem.eager_bytes == ((x + y + 8 * 27) + (2 * y + 4 * 8) + 2 * y) * F32
    assert stem.intensity == pytest.approx(stem.flops / stem.min_bytes)
    assert stem.reduction_length == 27

    dw = retina_profile.row("body.stage1.1")  # conv_dw(8, 16, 1) on 1x8x32x32
    assert dw.flops == 2 * (32 * 32 * 8 * 9 + 32 * 32 * 16 * 8)
    assert dw.min_bytes == (8 * 32 * 32 + 16 * 32 * 32 + 8 * 9 + 4 * 8 + 16 * 8 + 4 * 16) * F32
    assert dw.reduction_length == 9  # max(depthwise 1*3*3, pointwise 8*1*1)

    head = retina_profile.row("ClassHead.0")  # 1x1 conv 64 → 2 anchors x 2 with bias, on 1x64x8x8
    assert head.flops == 2 * 8 * 8 * 4 * 64
    assert head.output_shapes == "1x128x2"
    assert head.min_bytes == (64 * 8 * 8 + 128 * 2 + 4 * 64 + 4) * F32

    total = retina_profile.row(M.rows.TOTAL)
    assert total.flops == sum(r.flops for r in retina_profile.blocks())
    model, _ = retinaface_64()
    assert total.parameters == sum(p.numel() for p in model.parameters())


def test_times_and_summary_rows(retina_profile):
    for r in retina_profile.blocks():
        assert r.ref_median_ms > 0 and r.timing_method == "wall-clock" and r.calls == 1
    summed, outside, total = retina_profile.rows[-3:]
    assert summed.ref_median_ms == pytest.approx(sum(r.ref_median_ms for r in retina_profile.blocks()))
    assert summed.flops == total.flops and summed.min_bytes == sum(r.min_bytes for r in retina_profile.blocks())
    assert outside.ref_median_ms == pytest.approx(total.ref_median_ms - summed.ref_median_ms)


def test_bandwidth_roofline_and_bound_columns(retina_profile):
    for r in retina_profile.blocks() + retina_profile.rows[-3::2]:  # blocks, sum and total
        gbps = r.min_bytes / (r.ref_median_ms * 1e-3) / 1e9
        assert r.ref_gbps == pytest.approx(gbps)
        assert r.ref_bw_pct == pytest.approx(100 * gbps / 10.0)  # FAKE_CEILINGS: 10 GB/s
        assert r.bound == ("memory" if r.intensity < 10.0 else "compute")  # ridge 100e9 / 10e9 = 10 FLOP/B
    outside = retina_profile.row(M.rows.OUTSIDE)
    assert outside.ref_gbps is None and outside.bound == ""
    assert retina_profile.machine_ceilings() == FAKE_CEILINGS
    assert retina_profile.slowest(3)[0].ref_median_ms == max(r.ref_median_ms for r in retina_profile.blocks())
    if not ON_GPU:  # the CPU allocator keeps no peak statistic: nothing is guessed
        assert all(r.ref_peak_bytes is None for r in retina_profile.rows)
        assert any("peak memory is measured on CUDA only" in n for n in retina_profile.notes)
    assert any("torch.compile columns are empty" in n for n in retina_profile.notes)
    header = next(line for line in retina_profile.table().splitlines() if line.startswith("path"))
    assert "ref %BW" in header and "bound" in header and "compile ms" not in header


@pytest.mark.skipif(ON_GPU, reason="CPU-only property")
def test_no_speedups_on_cpu(retina_profile):
    assert all(r.speedup is None and r.fused_median_ms is None for r in retina_profile.rows)


def test_files_round_trip(retina_profile, tmp_path):
    paths = retina_profile.save(tmp_path / "out")
    rows = M.rows.read_csv(paths["csv"])
    assert len(rows) == len(RETINAFACE_BLOCKS) + 3
    assert [r["kind"] for r in rows].count("block") == len(RETINAFACE_BLOCKS)
    assert [r["kind"] for r in rows][-3:] == ["sum", "outside", "total"]
    assert rows == [dataclasses.asdict(r) for r in retina_profile.rows]
    assert list(rows[0]) == M.rows.COLUMNS and {"ref_gbps", "ref_bw_pct", "compile_median_ms", "fused_peak_bytes"} <= set(M.rows.COLUMNS)

    back = M.rows.Profile.read_json(paths["json"])
    assert back.rows == retina_profile.rows
    assert back.machine_ceilings() == FAKE_CEILINGS
    data = json.loads(open(paths["json"]).read())
    assert data["kind"] == "facefuse-profile" and data["ceilings"]["copy_gbps"] == 10.0
    assert data["environment"]["torch"] == torch.__version__
    assert {"date", "device", "gpu", "driver", "triton"} <= set(data["environment"])
    assert data["settings"]["input_shape"] == "1x3x64x64"
    for chart in ("chart", "roofline"):
        with open(paths[chart], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = open(paths["table"]).read()
    assert "body.stage1.0" in table and M.rows.TOTAL in table


def test_arcface_rows_cover_stem_blocks_and_head():
    model = R.randomize_batchnorm(R.arcface(seed=0))
    x = torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    prof = M.profiler.profile_model(model, x, warmup=0, repeats=1, fused=False)
    paths = [r.path for r in prof.blocks()]
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert paths == ["conv1", "bn1", "prelu", "maxpool", *blocks, "bn4", "dropout", "fc5", "bn5"]
    types = {r.path: r.block_type for r in prof.blocks()}
    assert all(types[b] == "IRBlock" for b in blocks)
    assert (types["conv1"], types["fc5"], types["bn5"]) == ("Conv2d", "Linear", "BatchNorm1d")
    assert prof.row("fc5").flops == 2 * 512 * 512 * 8 * 8
    assert prof.row("conv1").flops == 2 * 64 * 128 * 128 * 9
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert len(covering_rows(prof, name)) == 1, name


def test_fused_columns():
    # A small model of RetinaFace's blocks keeps the interpreter pass short: conv_bn and conv_dw
    # (fused), SSH (not fused itself, its conv_bn blocks are), ClassHead (not fused).
    model = R.randomize_batchnorm(nn.Sequential(R.conv_bn(3, 8, 2, 0.1), R.conv_dw(8, 16, 1), R.SSH(16, 16), R.ClassHead(16, 2)))
    x = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    check = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    prof = M.profiler.profile_model(model.eval(), x, warmup=0, repeats=1, fused=True, check_input=None if ON_GPU else check)
    assert [r.path for r in prof.blocks()] == ["0", "1", "2", "3"]
    rows = {r.path: r for r in prof.rows}
    backend = fused.runtime.backend()
    for r in prof.blocks() + [rows[M.rows.TOTAL]]:
        assert r.fused_within_tolerance is True, (r.path, r.fused_note)
        assert 0 <= r.fused_max_abs_error < 1e-4
    assert rows["0"].fused_backend == backend and "conv2d_bias_act" in rows["0"].fused_kernels
    assert rows["1"].fused_backend == backend and rows["1"].fused_kernels
    # SSH and the heads: fused themselves once their fused modules are registered, else the SSH's
    # inner conv_bn blocks are fused and the head runs the reference
    if "SSH" in fused.REGISTRY:
        assert rows["2"].fused_backend == backend
    else:
        assert rows["2"].fused_backend == f"{backend} (inner blocks)" and "not fused" in rows["2"].fused_note
    assert rows["3"].fused_backend == (backend if "ClassHead" in fused.REGISTRY else "reference (not fused)")
    assert rows[M.rows.TOTAL].fused_backend == backend
    assert prof.fuse_report  # fused.fuse's report, as text
    if not ON_GPU:
        assert all(r.fused_median_ms is None and r.speedup is None for r in prof.rows)
        assert any("interpreter timings are not speedups" in n for n in prof.notes)
        assert any("smaller input" in n for n in prof.notes)
        assert "speedup" not in header(prof)  # no speedup column
    else:
        assert all(r.speedup > 0 for r in prof.blocks())


def test_fused_check_catches_a_wrong_block(monkeypatch):
    def broken_fuse(model):
        model = fused.fuse(model)
        model[0][1].running_mean.add_(1.0)  # the fused copy's BN statistics no longer match
        return model

    monkeypatch.setattr(M.columns, "fuse", broken_fuse)
    model = R.randomize_batchnorm(nn.Sequential(R.conv_bn(3, 8, 2, 0.1), R.ClassHead(8, 2))).eval()
    prof = M.profiler.profile_model(model, torch.randn(1, 3, 12, 12), warmup=0, repeats=1, fused=True)
    assert prof.row("0").fused_within_tolerance is False
    assert "out of tolerance" in prof.row("0").fused_note
    assert prof.row("1").fused_within_tolerance is True
    assert any("failed the fused check" in n for n in prof.notes)


def test_parse_size_and_inputs():
    assert M.models.parse_size("320") == (320, 320)
    assert M.models.parse_size("480x640") == (480, 640)
    for bad in ("", "x", "64x", "abc", "0", "1x2x3", "-5"):
        with pytest.raises(ValueError):
            M.models.parse_size(bad)
    with pytest.raises(ValueError, match="128"):
        M.models.input_shape("arcface", (100, 100), 1)
    assert M.models.input_shape("arcface-se", (128, 128), 2) == (2, 1, 128, 128)
    assert M.models.input_shape("retinaface", (64, 96), 1) == (1, 3, 64, 96)


def test_gpu_only_code_path_runs(monkeypatch, tmp_path):
    """Exercise the fused-timing branch (GPU only) on this machine; these interpreter timings are
    thrown away, never reported."""
    monkeypatch.setattr(fused.measure.timing, "times_fused", lambda device: True)
    model = R.randomize_batchnorm(nn.Sequential(R.conv_bn(3, 8, 2, 0.1), R.ClassHead(8, 2))).eval()
    prof = M.profiler.profile_model(model, torch.randn(1, 3, 8, 8), warmup=0, repeats=1, fused=True)
    for path in ("0", "1", M.rows.TOTAL):
        r = prof.row(path)
        assert r.fused_median_ms > 0 and r.speedup > 0
    assert "speedup" in header(prof)
    r = prof.row("0")
    assert r.fused_gbps == pytest.approx(r.min_bytes / (r.fused_median_ms * 1e-3) / 1e9)
    assert r.speedup == pytest.approx(r.ref_median_ms / r.fused_median_ms) and r.speedup_vs_compile is None
    assert prof.row(M.rows.SUM).fused_median_ms == pytest.approx(sum(b.fused_median_ms for b in prof.blocks()))
    paths = prof.save(tmp_path)  # the chart with reference and fused bars side by side
    assert M.rows.read_csv(paths["csv"])[0]["speedup"] == prof.row("0").speedup


# --------------------------------------------------------------------------------------------
# Every block of every model; counts by hand; torch.compile, trace and options
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(M.models.MODELS))
def test_rows_cover_every_block_of_each_model(name):
    """find_rows (what the profile times) gives every outermost block once and covers every conv
    and linear layer exactly once, for each model `facefuse profile --model` knows."""
    model = M.models.build_model(name)
    rows = M.blocks.find_rows(model)
    paths = [p for p, _, _, _ in rows]
    assert len(paths) == len(set(paths))
    for path, module, kind, row_kind in rows:
        assert (row_kind == "block") == (R.block_type(module) is not None)
        assert row_kind == "block" or next(module.children(), None) is None  # otherwise a leaf module
    for mpath, m in model.named_modules():
        parents = [p for p in paths if mpath == p or mpath.startswith(p + ".")]
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert len(parents) == 1, mpath
        outer = not any(R.block_type(a) for p, a in model.named_modules() if p and mpath.startswith(p + "."))
        if mpath and R.block_type(m) is not None and outer:
            assert mpath in paths, mpath  # every outermost block has its own row
    types = [kind for _, _, kind, row_kind in rows if row_kind == "block"]
    expected = {"retinaface": {"conv_dw": 13, "SSH": 3, "FPN": 1},
                "retinaface-resnet50": {"Bottleneck": 16, "SSH": 3, "FPN": 1},
                "arcface": {"IRBlock": 8}, "arcface-se": {"IRBlock": 8}}[name]
    for kind, count in expected.items():
        assert types.count(kind) == count, (kind, types.count(kind))


def test_flops_and_bytes_of_a_small_conv_bn_by_hand():
    # conv_bn(3 -> 8, stride 2) on 1x3x16x16: output 1x8x8x8
    block = R.randomize_batchnorm(R.conv_bn(3, 8, 2, 0.1)).eval()
    prof = M.profiler.profile_model(nn.Sequential(block), torch.randn(1, 3, 16, 16), warmup=0, repeats=1, fused=False,
                           ceilings=FAKE_CEILINGS)
    r = prof.row("0")
    assert r.flops == 2 * 8 * 3 * 3 * 3 * 8 * 8 == 27648  # 2 x C_out x C_in x kh x kw x H_out x W_out
    x, y, w, bn = 3 * 16 * 16, 8 * 8 * 8, 8 * 3 * 3 * 3, 4 * 8  # input, output, conv weight, BN (w, b, mean, var)
    assert r.min_bytes == (x + y + w + bn) * F32 == 6112
    assert r.eager_bytes == ((x + y + w) + (2 * y + bn) + 2 * y) * F32  # conv, BN, LeakyReLU each read + write
    assert r.intensity == pytest.approx(27648 / 6112)
    assert r.bound == "memory"  # 4.5 FLOP/B, under FAKE_CEILINGS' ridge of 10

    # SEBlock(64) on 1x64x8x8: two Linear layers, 64 -> 4 -> 64, on the pooled vector
    se = R.randomize_batchnorm(R.SEBlock(64)).eval()
    prof = M.profiler.profile_model(nn.Sequential(se), torch.randn(1, 64, 8, 8), warmup=0, repeats=1, fused=False,
                           ceilings=FAKE_CEILINGS)
    r = prof.row("0")
    assert r.flops == 2 * 4 * 64 + 2 * 64 * 4
    state = (4 * 64 + 4) + 1 + (64 * 4 + 64)  # fc1 weight + bias, PReLU slope, fc2 weight + bias
    assert r.min_bytes == (2 * 64 * 8 * 8 + state) * F32


def tiny_model():
    return R.randomize_batchnorm(nn.Sequential(R.conv_bn(3, 8, 2, 0.1), R.conv_bn_no_relu(8, 8, 1))).eval()


def test_compile_columns_trace_and_round_trip(tmp_path, monkeypatch):
    # Dynamo with its "eager" backend exercises every step of the compile columns in a second;
    # Inductor's first C++ compile takes ten (lesson 06 runs the real thing).
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: real_compile(module, backend="eager"))
    trace = tmp_path / "t" / "trace.json"
    prof = M.profiler.profile_model(tiny_model(), torch.randn(1, 3, 8, 8), warmup=0, repeats=2, fused=False,
                           compile=["0", M.rows.TOTAL], ceilings=FAKE_CEILINGS, trace=trace, trace_steps=1)
    compiled, skipped, total = prof.row("0"), prof.row("1"), prof.row(M.rows.TOTAL)
    for r in (compiled, total):
        assert r.compile_median_ms > 0 and r.compile_seconds > 0, r.note
        assert r.compile_speedup == pytest.approx(r.ref_median_ms / r.compile_median_ms)
        assert r.compile_bw_pct == pytest.approx(100 * r.min_bytes / (r.compile_median_ms * 1e-3) / 1e9 / 10.0)
    assert skipped.compile_median_ms is None and prof.row(M.rows.SUM).compile_median_ms is None
    assert any("has no torch.compile time" in n for n in prof.notes)
    assert "compile ms" in header(prof)
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    assert "reference forward #1" in names and "torch.compile forward #1" in names
    assert prof.settings["trace"] == str(trace) and prof.settings["compile"] is True

    paths = prof.save(tmp_path / "out")
    assert M.rows.read_csv(paths["csv"]) == [dataclasses.asdict(r) for r in prof.rows]
    assert M.rows.Profile.read_json(paths["json"]).rows == prof.rows
    assert "torch.compile" in str(prof.chart().axes[0].get_legend_handles_labels()[1])


def test_fused_compile_column_checks_the_compiled_fused_model(monkeypatch):
    """The whole fused model under torch.compile(fullgraph=True): checked against float64 on the
    CPU (its kernels are torch.ops.facefuse ops run in the interpreter), not timed there."""
    real_compile = torch.compile
    calls = []

    def eager_backend(module, mode=None, **kwargs):
        calls.append(kwargs)
        return real_compile(module, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", eager_backend)
    prof = M.profiler.profile_model(tiny_model(), torch.randn(1, 3, 8, 8), warmup=0, repeats=1,
                                    compile=[M.rows.TOTAL], ceilings=FAKE_CEILINGS)
    total = prof.row(M.rows.TOTAL)
    assert {"fullgraph": True} in calls
    assert total.fused_compile_within_tolerance is True and total.fused_compile_max_abs_error < 1e-5, total.note
    assert total.fused_compile_seconds > 0
    assert total.fused_compile_median_ms is None and total.fused_compile_speedup is None  # interpreter: not timed
    assert any("fused + torch.compile" in n and "not timed" in n for n in prof.notes)
    assert "fused+compile ms" not in header(prof)
    assert M.rows.Profile.from_dict(json.loads(json.dumps(prof.to_dict()))).rows == prof.rows


def test_compile_failure_is_recorded_not_raised(monkeypatch):
    def broken_compile(module, **kwargs):
        raise RuntimeError("no C++ compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = R.randomize_batchnorm(nn.Sequential(*[R.conv_bn(3 if i == 0 else 8, 8, 1) for i in range(4)])).eval()
    prof = M.profiler.profile_model(model, torch.randn(1, 3, 6, 6), warmup=0, repeats=1, fused=False, compile=True,
                           ceilings=False)
    notes = [prof.row(p).note for p in ("0", "1", "2")]
    assert all(n == "torch.compile failed: RuntimeError: no C++ compiler here" for n in notes)
    assert "three rows in a row" in prof.row("3").note and "three rows in a row" in prof.row(M.rows.TOTAL).note
    assert all(r.compile_median_ms is None for r in prof.rows)
    assert all(r.ref_median_ms is not None for r in prof.blocks())  # the rest of the profile is intact
    assert not prof.ceilings and prof.roofline() is None and all(r.ref_bw_pct is None for r in prof.rows)


def test_profile_options_and_errors():
    prof = M.profiler.profile("retinaface", size=32, warmup=0, repeats=1, fused=False, device="cpu",
                     memory_format="channels_last", ceilings=FAKE_CEILINGS)
    assert prof.settings["memory_format"] == "channels_last" and prof.settings["cuda_graphs"] is False
    assert "channels_last" in prof.table().splitlines()[0]
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        M.profiler.profile("retinaface", size=32, device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        M.profiler.profile_model(tiny_model(), torch.randn(1, 3, 8, 8), device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="memory format"):
        M.profiler.profile("retinaface", size=32, device="cpu", memory_format="nhwc")


def test_cuda_graph_capture_failure_falls_back_and_says_so():
    row = M.rows.Row(kind="block", path="x", block_type="t")
    t = M.columns.time_row(lambda: None, "cpu", 0, 2, True, row, "reference")  # no CUDA here: the capture fails
    assert t is not None and t.runs == fused.measure.timing.CPU_MIN_REPEATS and t.method == "wall-clock"
    assert "reference timed without a CUDA graph (capture failed" in row.note
    assert fused.measure.timing.peak_memory_bytes(lambda: torch.ones(10), "cpu") is None  # not measured on a CPU


def test_ceilings_are_measured_then_cached(tmp_path, monkeypatch):
    from fused.measure import ceilings as C

    monkeypatch.setenv("FACEFUSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(C, "machine_load", lambda device: None)  # an idle machine (tests/measure/test_honest_timings.py: busy)
    monkeypatch.setattr(C, "probe_bandwidth", lambda device: 0.0)  # the probe agrees with the cache
    assert C.cache_path() == tmp_path / "cache" / "ceilings.json"
    first = C.measure("cpu")
    assert first.source == "measured" and first.copy_gbps > 0 and first.matmul_flops > 0
    assert first.matmul_dtype == "float32" and first.device_name.endswith(f"({torch.get_num_threads()} threads)")
    data = json.loads(C.cache_path().read_text())
    assert list(data) == [C.cache_key("cpu")] and torch.__version__ in C.cache_key("cpu")
    again = C.measure("cpu", torch.float16)  # a CPU measures float32 whatever it is asked
    assert again.source == str(C.cache_path()) and again.copy_gbps == first.copy_gbps
    C.cache_path().write_text("{not json")  # a damaged cache is measured again, not an error
    assert C.measure("cpu").source == "measured"
    monkeypatch.setenv("FACEFUSE_CACHE", str(tmp_path / "other"))
    assert C.measure("cpu", cache=False).source == "measured" and not (tmp_path / "other").exists()
    # the roofline's arithmetic
    c = FAKE_CEILINGS
    assert c.ridge == pytest.approx(10.0) and c.bandwidth == 10e9
    assert c.attainable(2.0) == pytest.approx(20e9) and c.attainable(50.0) == 100e9
    assert (c.bound(9.9), c.bound(10.0), c.bound(None)) == ("memory", "compute", "memory")
    assert C.Ceilings.from_dict(c.to_dict()) == c


def test_modules_that_return_their_input_move_no_bytes():
    """Dropout in eval mode returns its input (no kernel), so it adds no eager bytes; in-place ReLU does."""
    import torch.nn as nn

    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(), nn.ReLU(inplace=True)).eval()
    rows = M.blocks.find_rows(model)
    units, _ = M.blocks.record(model, torch.randn(2, 4), rows, count=True)
    by_type = {u.type: u.eager_bytes for u in units}
    assert by_type["Dropout"] == 0 and by_type["ReLU"] == 2 * 2 * 4 * 4
    assert M.tensors.moves_no_data(nn.Dropout().train()) is False
