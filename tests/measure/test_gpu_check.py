"""``facefuse gpu-check`` on a CPU: the dry run, resuming, budgets, skips, and the target summary."""

import json
import sys
import tarfile

import pytest

from tools import gpu_check as G
from tools.gpu_check import execute
from tools import pytest_cuda, sanitize_run


def machine(cuda=False, missing=(), tools=None):
    modules = {m: m not in missing for m in (*G.TEST_MODULES, *G.PLOT_MODULES, *G.LESSON_MODULES, *G.OPTIONAL_MODULES)}
    return G.Machine(cuda=cuda, gpu="NVIDIA H100 80GB HBM3" if cuda else None, python="3.12", torch="2.11",
                     triton="3.6", modules=modules, tools=tools if tools is not None else {"compute-sanitizer": None})


def script(name, code, *, timeout=60, estimate=1, kind="custom"):
    """A step that runs ``code`` in Python (no CUDA needed)."""
    return G.Step(name, "tests", kind, [sys.executable, "-c", code], timeout=timeout, estimate=estimate, cuda=False,
                  out=f"x/{name}")


# --- the dry run ----------------------------------------------------------------------------------


def test_dry_run_plans_every_stage_and_checks_every_command(tmp_path, capsys):
    out = tmp_path / "dry"
    assert G.main(["--dry-run", "--no-collect", "--out", str(out), "--bundle", str(tmp_path / "b.tar.gz")]) == 0
    plan = json.loads((out / "plan.json").read_text())
    steps = plan["steps"]
    assert {s["stage"] for s in steps} == set(G.STAGES)
    assert all(s["check"]["problems"] == [] for s in steps), [s["check"] for s in steps if s["check"]["problems"]]
    bench_families = {s["argv"][s["argv"].index("--family") + 1] for s in steps if s["kind"] == "bench"}
    assert bench_families == set(sanitize_run.racecheck_reasons()) == set(G.bench_families())
    for s in steps:
        assert s["timeout"] <= G.MAX_STEP_SECONDS
        if s["kind"] == "bench":
            assert {"--cuda-graphs", "--record"} <= set(s["argv"]) and "max-autotune" in s["argv"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and set(summary["stages"].values()) == {"planned"}
    assert not (out / "steps").exists(), "a dry run runs nothing"
    assert "dry run" in (out / "summary.md").read_text() and "dry run" in capsys.readouterr().out
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        assert "dry/summary.md" in tar.getnames()


def test_dry_run_reports_a_command_the_cli_rejects(tmp_path):
    bad = G.Step("bench-nope", "bench", "bench", [sys.executable, "-m", "fused", "bench", "--family", "nope"],
                 timeout=10, estimate=1)
    checks = G.check_plan([bad], tmp_path, machine())
    assert any("invalid choice" in p for p in checks["bench-nope"]["problems"])
    assert any("the bench steps cover ['nope']" in p for p in checks["bench-nope"]["problems"])  # the others are missing


def test_a_new_family_gets_a_default_bench_step_and_racecheck_reason(tmp_path, monkeypatch):
    """A family registered with one register_family line is benchmarked by gpu-check and run
    under the sanitizer without a line in BENCH_PLAN or sanitize_run."""
    from fused.measure import benchmark

    monkeypatch.setattr(benchmark, "FAMILIES", dict(benchmark.FAMILIES))
    benchmark.register_family("test_fpn", ("retinaface",), ("FPN",), "the FPN again")
    benchmark.register_family("test_se", ("arcface-se",), ("SEBlock",), racecheck="its tl.sum reductions")
    assert "test_fpn" not in {family for family, *_ in G.BENCH_PLAN}
    assert G.bench_plan()[-2:] == [("test_fpn", "all", (1, 16), G.steps.DEFAULT_BENCH_ESTIMATE),
                                   ("test_se", None, (1, 64), G.steps.DEFAULT_BENCH_ESTIMATE)]
    steps = [s for s in G.plan(tmp_path, machine(), ("bench",))]
    assert "bench-test_fpn-both-b1-16" in {s.name for s in steps}
    checks = G.check_plan(steps, tmp_path, machine())  # (the CLI parser is cached: it may not know test_fpn)
    assert not any("the bench steps cover" in p for c in checks.values() for p in c["problems"])
    reasons = sanitize_run.racecheck_reasons()
    assert reasons["test_fpn"] == benchmark.RACECHECK_DEFAULT and reasons["test_se"] == "its tl.sum reductions"
    assert reasons["conv_bn"] != benchmark.RACECHECK_DEFAULT  # the existing families keep their reasons


def test_the_cuda_test_selection_collects(tmp_path):
    step = next(s for s in G.plan(tmp_path, machine()) if s.name == "tests-cuda")
    problem, collected = G.collect_tests(step, tmp_path)
    assert problem is None and "deselected" in collected
    models = next(s for s in G.plan(tmp_path, machine()) if s.name == "tests-cuda-models")
    check = G.check_plan([models], tmp_path, machine())["tests-cuda-models"]  # what the dry run does
    assert check["problems"] == [] and any(i.startswith("collects: ") and "tests collected" in i for i in check["info"])


def test_cuda_selection_keeps_device_and_gpu_tests_only():
    class Item:
        def __init__(self, fixtures, gpu):
            self.fixturenames, self.gpu = fixtures, gpu

        def get_closest_marker(self, name):
            return object() if name == "gpu" and self.gpu else None

    assert pytest_cuda.runs_on_cuda(Item(["device", "data"], False))
    assert pytest_cuda.runs_on_cuda(Item([], True))
    assert not pytest_cuda.runs_on_cuda(Item(["tmp_path"], False))


def test_sanitizer_driver_check_passes_here_and_fails_on_a_family_it_cannot_run(monkeypatch, capsys):
    from fused.measure import benchmark

    assert sanitize_run.check() == []
    assert sanitize_run.main(["--check"]) == 0
    assert sanitize_run.main(["--list"]) == 0 and "conv_bn: racecheck because" in capsys.readouterr().out
    monkeypatch.setattr(benchmark, "FAMILIES", dict(benchmark.FAMILIES))
    benchmark.register_family("test_nothing", ("retinaface",), ("NoSuchBlock",), racecheck="")
    problems = sanitize_run.check()
    assert len(problems) == 2 and all("test_nothing" in p for p in problems)
    assert sanitize_run.main(["--check"]) == 1


# --- missing packages and tools -------------------------------------------------------------------


def test_a_step_missing_a_package_is_skipped_saying_which(tmp_path):
    m = machine(missing=("hypothesis", "nbclient"))
    steps = G.plan(tmp_path, m, ("tests",))
    interp = next(s for s in steps if s.name == "tests-interpreter")
    assert "tests/lessons/test_lessons.py" in interp.argv and any("nbclient" in n for n in interp.notes)
    states = G.run_plan(steps, tmp_path, m)
    assert {s["status"] for s in states} == {"skipped"}
    assert all("hypothesis" in s["reason"] for s in states)


def test_missing_sanitizer_and_cuda_skip_their_steps(tmp_path):
    m = machine(cuda=False)
    states = G.run_plan(G.plan(tmp_path, m, ("sanitizer", "bench")), tmp_path, m)
    assert all(s["status"] == "skipped" for s in states)
    assert "compute-sanitizer" in states[0]["reason"]
    assert states[-1]["reason"] == "no CUDA device here"
    m = machine(cuda=True, tools={"compute-sanitizer": "/usr/local/cuda/bin/compute-sanitizer"})
    step = G.plan(tmp_path, m, ("sanitizer",))[0]
    assert step.argv[0] == "/usr/local/cuda/bin/compute-sanitizer" and step.env["PYTORCH_NO_CUDA_MEMORY_CACHING"] == "1"


# --- running, resuming, budgets -------------------------------------------------------------------


def test_resume_keeps_finished_steps_and_retry_reruns_failures(tmp_path):
    count = tmp_path / "count"
    bump = f"import pathlib; p = pathlib.Path({str(count)!r}); p.write_text(str(int(p.read_text() if p.exists() else 0) + 1))"
    steps = [script("good", bump), script("bad", bump + "; raise SystemExit(3)")]
    out = tmp_path / "out"
    first = G.run_plan(steps, out, machine())
    assert [s["status"] for s in first] == ["passed", "failed"] and first[1]["rc"] == 3
    assert "$ " in (out / first[0]["log"]).read_text()
    assert G.run_plan(steps, out, machine(), resume=True)[0]["status"] == "passed"
    assert count.read_text() == "2"  # resume ran neither step again
    G.run_plan(steps, out, machine(), resume=True, retry=True)
    assert count.read_text() == "3"  # only the failed one
    G.run_plan(steps, out, machine())
    assert count.read_text() == "5"  # without --resume, everything


def test_timeouts_and_the_call_budget(tmp_path):
    sleep = "import time; time.sleep(60)"
    steps = [script("slow", sleep, timeout=1), script("big", "pass", estimate=1000), script("cut", sleep, timeout=60)]
    states = G.run_plan(steps, tmp_path, machine(), budget=6)
    assert [s["status"] for s in states] == ["timeout", "not run", "interrupted"]
    assert states[2]["duration_s"] < 30
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages"]["tests"] == "failed"
    assert "Not run yet: 2 tests steps (big, cut)" in (tmp_path / "summary.md").read_text()
    again = G.run_plan(steps, tmp_path, machine(), resume=True, budget=6)
    assert again[0]["status"] == "timeout" and again[0]["duration_s"] == states[0]["duration_s"]  # kept
    assert again[2]["status"] == "interrupted" and again[2]["started"] != states[2]["started"]  # ran again


def test_a_bundle_carries_a_run_to_a_fresh_folder(tmp_path):
    steps = [script("one", "print('hello')")]
    G.run_plan(steps, tmp_path / "a", machine(), bundle=str(tmp_path / "a.tar.gz"))
    G.seed_from(str(tmp_path / "a.tar.gz"), tmp_path / "b")
    assert G.load_state(tmp_path / "b", "one")["status"] == "passed"
    assert "hello" in (tmp_path / "b" / "logs" / "one.log").read_text()
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz"):
        pass
    with pytest.raises(ValueError, match="not a gpu-check bundle"):
        G.seed_from(str(tmp_path / "empty.tar.gz"), tmp_path / "c")


def test_the_command_refuses_unknown_stages(tmp_path, capsys):
    assert G.main(["--out", str(tmp_path), "--stages", "tests,nope"]) == 2
    assert "unknown stage" in capsys.readouterr().err


def test_facefuse_gpu_check_delegates_to_the_checkouts_harness(tmp_path, capfd):
    from fused.cli import main

    assert main(["gpu-check", "--out", str(tmp_path), "--stages", "nope"]) == 2
    err = capfd.readouterr().err
    assert "python -m tools.gpu_check" in err and "unknown stage" in err  # the harness's own usage error


def test_facefuse_gpu_check_outside_a_checkout_says_how_to_run_it(tmp_path, monkeypatch, capsys):
    import fused
    from fused.cli import main

    monkeypatch.setattr(fused, "__file__", str(tmp_path / "site-packages" / "fused" / "__init__.py"))
    assert main(["gpu-check", "--quick", "--out", str(tmp_path / "o")]) == 2
    assert "python -m tools.gpu_check --quick" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--budget", "nan"], "finite"), (["--budget", "inf"], "finite"), (["--budget", "0"], "positive"),
    (["--repeats", "0"], "integer >= 1"), (["--workers", "-3"], "integer >= 1"), (["--warmup", "-1"], "integer >= 0"),
])
def test_bad_numbers_are_usage_errors(tmp_path, capsys, args, message):
    assert G.main(["--quick", "--dry-run", "--out", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unwritable_outputs_fail_before_any_work(tmp_path, capsys, monkeypatch):
    worked = []
    monkeypatch.setattr(G, "probe", lambda: worked.append("probe"))  # the command's first piece of work
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert G.main(["--quick", "--dry-run", "--out", str(blocker / "sub")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert G.main(["--dry-run", "--out", str(tmp_path / "o"), "--bundle", str(blocker / "b.tar.gz")]) == 2
    assert "--bundle" in capsys.readouterr().err
    (tmp_path / "d.tar.gz").mkdir()
    assert G.main(["--dry-run", "--out", str(tmp_path / "o"), "--bundle", str(tmp_path / "d.tar.gz")]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert worked == [] and not (tmp_path / "o").exists()
    monkeypatch.setattr(G.os, "access", lambda path, mode: False)  # a read-only file system
    assert G.main(["--quick", "--dry-run", "--out", str(tmp_path / "o")]) == 2
    assert "not writable" in capsys.readouterr().err and worked == []


# --- the quick check ------------------------------------------------------------------------------


def test_quick_dry_run_plans_its_steps_inside_the_budget(tmp_path, capsys):
    out = tmp_path / "q"
    assert G.main(["--quick", "--dry-run", "--out", str(out)]) == 0
    plan = json.loads((out / "plan.json").read_text())
    steps = plan["steps"]
    assert plan["budget_s"] == G.QUICK_BUDGET == 480 and plan["quick"]
    assert [s["name"] for s in steps][:2] == ["quick-environment", "quick-correctness"]
    assert all(s["check"]["problems"] == [] for s in steps), [s["check"] for s in steps if s["check"]["problems"]]
    assert not any(s["kind"] == "pytest" or s["env"].get("TRITON_INTERPRET") for s in steps)  # nothing for a CPU
    headline = [s for s in steps if s["name"].startswith(("quick-environment", "quick-correctness", "quick-model-"))]
    assert len(headline) == 5 and all(s["within_budget"] for s in headline)
    assert sum(s["estimate"] for s in steps if s["within_budget"]) <= 480
    assert all(s["timeout"] <= 480 for s in steps)
    families = {s["argv"][s["argv"].index("--family") + 1] for s in steps if s["kind"] == "bench"}
    assert families >= {"retinaface_model", "arcface_model", "conv_bn", "conv_dw", "depthwise", "squeeze_excite"}
    for s in steps:
        if s["kind"] == "bench":
            assert "--cuda-graphs" in s["argv"] and s["argv"][s["argv"].index("--compile-mode") + 1] in (
                "default", "max-autotune")
            assert (s["env"].get("FACEFUSE_AUTOTUNE") == "0") == s["name"].endswith("-plan")
    text = capsys.readouterr().out
    assert "quick-tuned-mobile0.25-b1" in text and "not run" in text  # max-autotune does not fit 480 s
    # a budget too small for the environment and correctness steps is a plan problem
    assert G.main(["--quick", "--dry-run", "--out", str(tmp_path / "small"), "--budget", "60"]) == 1
    assert "more than --budget" in (tmp_path / "small" / "summary.md").read_text()


def test_a_quick_run_without_cuda_writes_the_environment_and_marks_every_target_not_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert G.main(["--quick", "--out", str(out), "--bundle", str(tmp_path / "b.tar.gz")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    states = {s["name"]: s["status"] for s in summary["steps"]}
    assert states["quick-environment"] == "passed" and summary["environment"]["torch"]
    assert {v for k, v in states.items() if k != "quick-environment"} == {"skipped"}
    assert {t["status"] for t in summary["targets"]} == {"not run"} and len(summary["targets"]) == len(G.TARGETS)
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith((out / "summary.md").read_text().rstrip())  # the summary prints last
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        assert "run/environment.json" in tar.getnames()


def test_the_correctness_step_marks_what_its_budget_leaves_not_run(monkeypatch):
    import time

    import torch

    from tools.gpu_check import quick

    found = []
    quick.model_runs("cpu", time.monotonic() - 1, print, found.append)
    assert found and {f["status"] for f in found} == {"not run"} and len(found) == 4 * 4 * 2
    found.clear()
    monkeypatch.setattr(quick, "MODES", {"fp32": ("float32", False, "float32")})
    from fused.measure import benchmark

    monkeypatch.setattr(benchmark, "families", lambda: ["squeeze_excite"])
    quick.family_case_runs(torch.device("cpu"), time.monotonic() + 600, print, found.append)  # the interpreter here
    assert len(found) == 2 * quick.SHAPES_PER_FAMILY and {f["status"] for f in found} == {"passed"}, found
    assert all(f["kernels"] for f in found)


def test_targets_are_given_per_way_of_measuring():
    rows = G.bench_rows([
        ("bench/quick-family-conv_dw-b1-16-plan/bench.json", {**payload([row("conv_dw", "conv_dw [retinaface]", 1, 4.0, 3.5, 1.2)]),
                                                              "settings": {"model": "all", "dtype": "float16", "cuda_graphs": True,
                                                                           "compile_mode": "default"}}),
        ("bench/bench-conv_dw/bench.json", payload([row("conv_dw", "conv_dw [retinaface]", 1, 4.0, 3.5, 1.6)])),
    ])
    found = [t for t in G.evaluate_targets(rows) if t["key"] == "conv_dw-compile"]
    assert [(t["variant"], t["status"]) for t in found] == [("compile default, fused plan configs", "missed"),
                                                            ("compile max-autotune, fused autotuned", "met")]


# --- reading results ------------------------------------------------------------------------------


def test_junit_counts_and_failing_ids(tmp_path):
    path = tmp_path / "j.xml"
    path.write_text('<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
                    '<testcase classname="tests.test_a" name="test_ok"/>'
                    '<testcase classname="tests.test_a" name="test_bad"><failure message="no"/></testcase>'
                    '</testsuite></testsuites>')
    found = G.read_junit(path)
    assert (found["passed"], found["failures"], found["skipped"]) == (2, 1, 1)
    assert found["failing"] == ["tests.test_a::test_bad"]


def test_sanitizer_log_is_parsed_per_family():
    log = "\n".join([
        "[sanitize] begin conv_bn", "[sanitize] end conv_bn: 3 cases",
        "[sanitize] begin fpn",
        "========= Invalid __global__ read of size 2 bytes",
        "=========     at _lateral_upsample_add_kernel+0x1d0 in fpn.py:60",
        "[sanitize] end fpn: 1 cases",
        "========= ERROR SUMMARY: 1 error",
    ])
    found = G.parse_sanitizer_log(log)
    assert found["error_summary"] == 1 and found["reports_per_family"] == {"fpn": 1}
    assert G.parse_sanitizer_log("========= ERROR SUMMARY: 0 errors")["error_summary"] == 0
    assert G.parse_sanitizer_log("crashed")["error_summary"] is None


# --- targets --------------------------------------------------------------------------------------


def row(family, case, batch, eager, eager_cl, compile_, status="ok", flops=1, nbytes=1000):
    return {"family": family, "case": case, "shape": f"{batch}x8x16x16", "status": status, "flops": flops,
            "bytes_moved": nbytes, "speedup_eager": eager, "speedup_eager_cl": eager_cl, "speedup_compile": compile_}


def payload(rows, *, model="all", dtype="float16", graphs=True, gpu="NVIDIA H100 80GB HBM3"):
    return {"settings": {"model": model, "dtype": dtype, "cuda_graphs": graphs, "compile_mode": "max-autotune"},
            "environment": {"gpu": gpu}, "ceilings": {"copy_gbps": 3000.0, "matmul_flops": 6e14}, "rows": rows}


def target(results, key):
    return next(t for t in results if t["key"] == key)


def test_targets_met_missed_and_not_run():
    rows = G.bench_rows([("b.json", payload([
        row("conv_bn", "conv_bn 8->8 k3 s1 1x8x16x16 [retinaface]", 1, 2.5, 1.9, 1.2),
        row("conv_bn", "conv_bn 8->8 k3 s1 16x8x16x16 [retinaface-resnet50]", 16, 2.0, 3.0, 1.1),
        row("conv_bn", "big compute-bound conv [retinaface]", 1, 1.0, 1.0, 0.5, flops=10**9, nbytes=1000),
        row("conv_dw", "conv_dw [retinaface]", 1, 4.0, 3.5, 1.2),
        row("depthwise", "depthwise 64->64 k3 s1 1x64x40x40", 1, 2.5, 1.8, 1.1),
        row("retinaface_model", "RetinaFace [retinaface]", 1, 2.2, 2.1, 1.4),
        row("retinaface_model", "RetinaFace [retinaface-resnet50]", 1, 0.5, 0.5, 0.5),
        row("retinaface_model", "RetinaFace 16 [retinaface]", 16, 0.5, 0.5, 0.5),
    ]))])
    results = G.evaluate_targets(rows)
    eager = target(results, "conv_bn-eager")
    assert eager["status"] == "met" and eager["rows"] == 2  # the compute-bound row is not a memory-bound layer
    assert eager["worst"] == pytest.approx(1.9) and eager["worst_vs_eager_nchw"] == pytest.approx(2.0)
    assert target(results, "conv_bn-compile")["status"] == "met"
    dw_compile = target(results, "conv_dw-compile")
    assert dw_compile["status"] == "missed" and dw_compile["worst"] == pytest.approx(1.2)
    assert target(results, "conv_dw-eager")["status"] == "met"
    whole = target(results, "retinaface-compile")  # mobile0.25 at batch 1 only
    assert whole["status"] == "met" and whole["rows"] == 1 and whole["worst"] == pytest.approx(1.4)
    assert target(results, "squeeze_excite-eager")["status"] == "not run"
    depthwise = target(results, "depthwise-eager")  # the depthwise family: the kernel alone
    assert depthwise["status"] == "missed" and depthwise["worst"] == pytest.approx(1.8)
    unmeasurable = G.Target("x", "x >= 2x eager", None, "eager", 2.0, unmeasured="no family times x")
    assert G.evaluate_targets(rows, [unmeasurable])[0]["notes"] == ["no family times x"]


def test_a_target_is_missed_when_correctness_fails_and_not_comparable_off_conditions():
    failed = G.bench_rows([("b.json", payload([row("squeeze_excite", "SEBlock 64", 1, None, None, None, status="failed"),
                                               row("squeeze_excite", "SEBlock 128", 1, 5.0, 5.0, 2.0)]))])
    se = target(G.evaluate_targets(failed), "squeeze_excite-eager")
    assert se["status"] == "missed" and "correctness first" in se["notes"][0]
    fp32 = G.bench_rows([("b.json", payload([row("squeeze_excite", "SEBlock 64", 1, 5.0, 5.0, 2.0)], dtype="float32"))])
    assert target(G.evaluate_targets(fp32), "squeeze_excite-eager")["status"] == "not comparable"
    arc = G.bench_rows([("b.json", payload([row("arcface_model", "ResNetArcFace 1x1x128x128 [arcface]", 64, 3, 3, 0.9),
                                            row("arcface_model", "ResNetArcFace 1x1x128x128 [arcface-se]", 64, 3, 3, 2.0)]))])
    arcface = target(G.evaluate_targets(arc), "arcface-compile")
    assert arcface["status"] == "missed" and arcface["rows"] == 1 and arcface["worst"] == pytest.approx(0.9)


def test_summary_reads_targets_from_the_bench_outputs(tmp_path):
    bench = tmp_path / "bench" / "bench-conv_dw-mobile0.25-b1"
    bench.mkdir(parents=True)
    (bench / "bench.json").write_text(json.dumps(payload([row("conv_dw", "conv_dw", 1, 3.5, 3.2, 1.6)], model="retinaface")))
    profile = tmp_path / "profile" / "profile-retinaface-b1-graphs"
    profile.mkdir(parents=True)
    (profile / "profile.json").write_text(json.dumps({
        "kind": "facefuse-profile", "settings": {"model": "retinaface", "batch": 1, "cuda_graphs": True},
        "rows": [{"kind": "block", "path": "body"},
                 {"kind": "total", "path": "(model)", "ref_median_ms": 2.0, "compile_median_ms": 1.5,
                  "fused_median_ms": 0.8, "speedup": 2.5, "speedup_vs_compile": 1.875, "fused_within_tolerance": True}]}))
    summary = G.write_summary(tmp_path, G.plan(tmp_path, machine(), ("bench",)), machine())
    assert target(summary["targets"], "conv_dw-compile")["status"] == "met"
    text = (tmp_path / "summary.md").read_text()
    assert "| fused conv_dw >= 1.5x torch.compile | met | 1.60 |" in text
    assert "| profile-retinaface-b1-graphs | 2 | 1.5 | 0.8 | 2.50 | 1.88 | yes |" in text


def test_plan_order_puts_the_interpreter_run_after_the_sanitizer(tmp_path):
    names = [s.name for s in G.plan(tmp_path, machine(), G.STAGES)]
    assert names[:5] == ["tests-cuda", "tests-cuda-models", "sanitizer-memcheck", "sanitizer-racecheck", "tests-interpreter"]
    assert names[-1] == "readme" and len(names) == len(set(names))


def test_an_unfinished_pytest_log_is_counted():
    log = ("tests/test_a.py::test_one PASSED [ 50%]\n[gw1] FAILED tests/test_a.py::test_two[fp16]\n"
           "tests/test_b.py::test_three SKIPPED (needs a CUDA GPU)\nFAILED tests/test_a.py::test_two[fp16] - boom\n")
    found = G.count_pytest_log(log)
    assert (found["passed"], found["failures"], found["skipped"]) == (1, 1, 1)
    assert found["failing"] == ["tests/test_a.py::test_two[fp16]"]


def test_a_bundle_past_the_limit_leaves_traces_out(tmp_path):
    out = tmp_path / "out"
    (out / "profile").mkdir(parents=True)
    (out / "profile" / "trace.json").write_bytes(__import__("os").urandom(4096))
    (out / "summary.md").write_text("summary")
    left = G.make_bundle(out, str(tmp_path / "b.tar.gz"), limit=1024)
    assert left == ["out/profile/trace.json"]
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        assert "out/summary.md" in tar.getnames() and "out/profile/trace.json" not in tar.getnames()


def test_the_readme_step_restores_recorded_results_and_always_runs(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "results").mkdir(parents=True)
    (project / "README.md").write_text("readme")
    monkeypatch.setattr(execute, "ROOT", project)  # where steps run and record their results
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    (out / "results" / "conv_bn-h100.json").write_text("{}")  # recorded by an earlier call
    count = tmp_path / "count"
    step = G.Step("readme", "readme", "readme", [sys.executable, "-c", f"open({str(count)!r}, 'a').write('x')"],
                  timeout=60, estimate=1, cuda=False, out="readme/README.md")
    assert G.run_plan([step], out, machine())[0]["status"] == "passed"
    assert (project / "results" / "conv_bn-h100.json").exists()
    assert (out / "readme" / "README.md").read_text() == "readme"
    G.run_plan([step], out, machine(), resume=True)
    assert count.read_text() == "xx"


def test_sanitizer_driver_runs_a_family_in_both_layouts(capsys):
    import torch

    found = sanitize_run.run_family("squeeze_excite", dtype=torch.float32, device="cpu")  # the interpreter here
    assert found["cases"] > 0 and found["fallbacks"] == []
    assert {"se_squeeze_partial", "se_excite", "se_scale_residual_act"} <= set(found["kernels"])
    out = capsys.readouterr().out
    assert "[sanitize] begin squeeze_excite" in out and G.parse_sanitizer_log(out)["families_ended"]
