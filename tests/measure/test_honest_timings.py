"""Honest timings on small, busy CPUs: impossible numbers are flagged, ceilings measured under load
are not cached, charts stay readable (issue 18). Synthetic rows and fake measurements: no timing here
depends on how busy the machine is."""

import json

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import fused.measure as M  # noqa: E402
from fused.measure import ceilings as C  # noqa: E402
from fused.measure import charts, timing  # noqa: E402
from fused.measure.rows import OUTSIDE, SUM, TOTAL, Profile, Row, flag_rows, percent  # noqa: E402

from .test_profile import FAKE_CEILINGS  # noqa: E402  (copy 10 GB/s, matmul 100 GFLOP/s)


def block(path, ms, *, flops=1_000_000, min_bytes=1_000_000, compile_ms=None):
    return Row(kind="block", path=path, block_type="conv_bn", flops=flops, min_bytes=min_bytes,
               intensity=flops / min_bytes, ref_median_ms=ms, compile_median_ms=compile_ms, timing_method="wall-clock")


def profile_of(blocks, model_ms, ceil=FAKE_CEILINGS, *, model_compile_ms=None):
    """A profile built the way profile_model builds one, from made-up times."""
    total = Row(kind="total", path=TOTAL, block_type="RetinaFace", flops=sum(b.flops for b in blocks),
                min_bytes=sum(b.min_bytes for b in blocks), ref_median_ms=model_ms,
                compile_median_ms=model_compile_ms, timing_method="wall-clock")
    total.intensity = total.flops / total.min_bytes
    notes = []
    summed, outside = M.profiler.summary_rows(blocks, total, notes)
    rows = blocks + [summed, outside, total]
    for r in rows:
        M.profiler.derive(r, ceil)
    notes += flag_rows(rows, ceil)
    return Profile(rows, {"device": "cpu", "model": "retinaface"}, {}, notes, "", ceil.to_dict() if ceil else {})


# -- flags ----------------------------------------------------------------------------------------

def test_honest_numbers_are_not_flagged():
    # 1 MB in 1 ms = 1 GB/s (10% of the copy roof), 1 GFLOP/s; the model 10% above its blocks
    prof = profile_of([block("a", 1.0), block("b", 2.0)], 3.3)
    assert prof.flagged() == [] and not any("FLAGGED" in n for n in prof.notes)
    assert "FLAGS" not in prof.table()


def test_outside_time_above_the_sum_of_blocks_is_flagged():
    # what a busy 2-core CPU printed: (model) 1546 ms against a 15 ms sum of blocks
    prof = profile_of([block("a", 5.0), block("b", 10.0)], 1546.0)
    outside = prof.row(OUTSIDE)
    assert outside.ref_median_ms == pytest.approx(1531.0)
    assert outside.flags == "outside>sum(ref)" and prof.flagged() == [outside]
    assert any(n.startswith("FLAGGED outside>sum") for n in prof.notes)
    line = next(line for line in prof.table().splitlines() if line.startswith(OUTSIDE))
    assert line.rstrip().endswith("outside>sum(ref)")  # shown beside the number, not silently


def test_large_negative_outside_time_is_flagged_small_noise_is_not():
    assert profile_of([block("a", 5.0), block("b", 10.0)], 14.0).flagged() == []  # -1 ms: noise
    prof = profile_of([block("a", 500.0), block("b", 1000.0)], 128.0)  # -1372 ms
    assert prof.row(OUTSIDE).flags == "outside<0(ref)"


def test_rows_above_the_roofline_are_flagged():
    # 1 MB in 0.05 ms = 20 GB/s: 200% of the 10 GB/s copy roof; 1 GFLOP in 5 ms = 200 GFLOP/s: 2x the matmul roof
    prof = profile_of([block("fast", 0.05), block("compute", 5.0, flops=10**9), block("ok", 1.0)], 20.0)
    assert prof.row("fast").ref_bw_pct == pytest.approx(200.0)
    assert prof.row("fast").flags == "above-roof(ref)"
    assert prof.row("compute").flags == "above-roof(ref)"
    assert prof.row("ok").flags == ""
    assert any(n.startswith("FLAGGED above-roof, 2 row(s)") for n in prof.notes)
    assert "--remeasure" in next(n for n in prof.notes if "above-roof" in n)


def test_a_zero_compile_ratio_is_flagged_and_never_printed_as_zero():
    prof = profile_of([block("a", 1.0, compile_ms=0.5), block("b", 1.0, compile_ms=400.0)], 2.2)
    assert prof.row("a").compile_speedup == pytest.approx(2.0) and prof.row("a").flags == ""
    assert prof.row("b").compile_speedup == pytest.approx(0.0025)
    assert prof.row("b").flags == "compile-ratio"
    table = prof.table()
    assert "0.00x" not in table and "0.0025x" in table
    assert M.rows._fmt_x(0.5) == "0.50x"


def test_percent_of_a_share_outside_0_100_is_flagged():
    assert percent(1.0, 4.0) == "25%"
    assert percent(2.9, 1.0, "fixed cost").startswith("290% (FLAGGED")
    assert percent(-0.1, 1.0).startswith("-10% (FLAGGED")
    assert percent(1.0, 0.0) == "n/a" and percent(None, 1.0) == "n/a"


# -- timing ---------------------------------------------------------------------------------------

def test_cpu_timing_fixes_the_thread_count_and_times_enough_runs():
    before = torch.get_num_threads()
    seen = []
    t = timing.time_callable(lambda: seen.append(torch.get_num_threads()), "cpu", warmup=1, repeats=2, threads=1)
    assert set(seen) == {1} and torch.get_num_threads() == before  # fixed during, restored after
    assert t.threads == 1 and t.runs == timing.CPU_MIN_REPEATS == len(seen) - 1
    assert t.min_ms <= t.median_ms <= t.max_ms and "min" in str(t)
    assert timing.time_callable(lambda: None, "cpu", repeats=30).runs == 30
    with pytest.raises(ValueError, match="threads"):
        timing.time_callable(lambda: None, "cpu", threads=0)


def test_cpu_threads_leave_the_busy_cores_alone(monkeypatch):
    monkeypatch.setattr(timing.os, "cpu_count", lambda: 2)
    with timing.torch_threads(2):
        monkeypatch.setattr(timing.os, "getloadavg", lambda: (6.6, 5.0, 4.0))  # a busy 2-core machine
        assert timing.cpu_threads() == 1
        monkeypatch.setattr(timing.os, "getloadavg", lambda: (0.1, 0.1, 0.1))  # an idle one
        assert timing.cpu_threads() == 2


def test_a_profile_times_every_row_with_one_fixed_thread_count(monkeypatch):
    seen = set()
    real = timing.time_callable

    def spy(fn, device="cpu", **kwargs):
        t = real(fn, device, **kwargs)
        seen.add(t.threads)
        return t

    monkeypatch.setattr(timing, "time_callable", spy)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    before = torch.get_num_threads()
    prof = M.profiler.profile_model(model, torch.randn(1, 3, 8, 8), warmup=0, repeats=1, fused=False, device="cpu",
                                    ceilings=False, threads=1)
    assert seen == {1} and prof.settings["torch_threads"] == 1 and torch.get_num_threads() == before
    with timing.torch_threads(1):  # time_callable inside a fixed block keeps its count
        assert timing.time_callable(lambda: None, "cpu").threads == 1


# -- ceilings -------------------------------------------------------------------------------------

@pytest.fixture
def fake_machine(tmp_path, monkeypatch):
    """Ceilings measured by a fake machine: ``state`` sets what the next measurement, the probe and
    the load say, and counts the measurements."""
    state = {"copy": 50.0, "matmul": 100e9, "probe": 50.0, "load": None, "measured": 0}

    def copy_bandwidth(device, **kwargs):
        state["measured"] += 1
        return state["copy"]

    monkeypatch.setenv("FACEFUSE_CACHE", str(tmp_path))
    monkeypatch.setattr(C, "copy_bandwidth", copy_bandwidth)
    monkeypatch.setattr(C, "matmul_throughput", lambda device, dtype=None, **kwargs: state["matmul"])
    monkeypatch.setattr(C, "probe_bandwidth", lambda device: state["probe"])
    monkeypatch.setattr(C, "machine_load", lambda device: state["load"])
    return state


def cached_copy():
    return next(iter(json.loads(C.cache_path().read_text()).values()))["copy_gbps"]


def test_a_ceiling_measured_under_load_is_not_cached(fake_machine):
    fake_machine.update(copy=5.6, load="load average 3.9 on 2 cores")
    c = C.measure("cpu")
    assert c.copy_gbps == 5.6 and "busy machine" in c.source and "not cached" in str(c)
    assert not C.cache_path().exists()
    fake_machine.update(copy=50.0, load=None)
    assert C.measure("cpu").copy_gbps == 50.0 and cached_copy() == 50.0


def test_a_probe_faster_than_the_cache_measures_again_and_keeps_the_best(fake_machine):
    fake_machine.update(copy=10.9)  # cached under load that the load average missed
    C.measure("cpu")
    assert cached_copy() == 10.9
    fake_machine.update(copy=50.0, probe=48.0)  # idle now: the probe is over 1.2x the cache
    before = fake_machine["measured"]
    c = C.measure("cpu")
    assert c.copy_gbps == 50.0 and cached_copy() == 50.0 and fake_machine["measured"] - before == C.RUNS
    # a probe that agrees (or is slower: a busy moment) keeps the cache without measuring
    fake_machine.update(probe=45.0)
    before = fake_machine["measured"]
    assert C.measure("cpu").source == str(C.cache_path()) and fake_machine["measured"] == before
    # --remeasure on a busier moment never lowers the cached best
    fake_machine.update(copy=20.0)
    assert C.measure("cpu", remeasure=True).copy_gbps == 50.0 and cached_copy() == 50.0


def test_each_measurement_keeps_the_best_of_several_runs(fake_machine, monkeypatch):
    runs = iter([30.0, 45.0, 40.0, 35.0])
    monkeypatch.setattr(C, "copy_bandwidth", lambda device, **kwargs: next(runs))
    monkeypatch.setattr(C, "RUNS", 3)
    assert C.measure("cpu", cache=False).copy_gbps == 45.0


# -- charts ---------------------------------------------------------------------------------------

def test_profile_chart_log_axis_legend_and_no_synthetic_row_among_blocks():
    prof = profile_of([block("tiny", 0.01), block("big", 20.0)], 1546.0)  # spans decades; outside flagged
    ax = prof.chart().axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert ax.get_xscale() == "log"
    assert ax.get_legend() is not None
    assert len(labels) == 2 and not any(name in " ".join(labels) for name in (TOTAL, SUM, OUTSIDE))
    title = ax.get_title()
    assert "whole model: reference 1.55e+03 ms" in title and "FLAGGED outside>sum" in title
    bars = [p.get_width() for p in ax.patches]
    assert min(bars) > 0  # never a negative bar


def test_profile_chart_is_linear_when_times_are_close_and_always_has_a_legend():
    prof = profile_of([block("a", 1.0), block("b", 3.0)], 4.4)
    ax = prof.chart().axes[0]
    assert ax.get_xscale() == "linear" and ax.get_legend() is not None
    assert charts.spans_decades([0.01, 1.0]) and not charts.spans_decades([0.5, 1.0, None, -3.0])


def test_bench_chart_one_readable_panel_per_family(tmp_path):
    results = [{"status": "ok", "family": "conv_bn", "case": f"conv_bn {i}", "eager_ms": 10.0 ** (i - 2),
                "eager_cl_ms": None, "compile_ms": 0.5} for i in range(5)]
    results += [{"status": "ok", "family": "ssh", "case": "ssh 0", "eager_ms": 1.0, "eager_cl_ms": 1.1,
                 "compile_ms": 0.9}, {"status": "failed", "family": "fpn", "case": "fpn 0"}]
    fig = charts.bench_figure(results, {"cpu": "test CPU"})
    axes = fig.axes
    assert [ax.get_title(loc="left") for ax in axes] == ["conv_bn", "ssh"]
    assert [ax.get_yscale() for ax in axes] == ["log", "linear"]
    assert all(ax.get_legend() is not None for ax in axes)
    width, height = fig.get_size_inches()
    assert width >= 8 and height >= 3 * len(axes)
    charts.bench_chart(results, tmp_path / "bench.png", {"cpu": "test CPU"})
    assert (tmp_path / "bench.png").stat().st_size > 0
