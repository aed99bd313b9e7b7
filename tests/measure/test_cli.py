"""The facefuse command: files written, bad arguments answered with exit status 2 and a message."""

import json
import os
import subprocess
import sys

import pytest
import torch

import fused
import fused.measure as M
from fused.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NO_CUDA = not torch.cuda.is_available() or fused.runtime.INTERPRETED
TINY = ["--size", "48", "--repeats", "1", "--warmup", "0", "--quiet", "--no-compile"]


@pytest.fixture(autouse=True)
def ceilings_cache(tmp_path, monkeypatch):
    """The measured ceilings go to a temporary cache, never to the real ~/.cache/facefuse."""
    monkeypatch.setenv("FACEFUSE_CACHE", str(tmp_path / "cache"))
    # an idle machine, so that what is measured is cached (a busy one's is not: test_honest_timings.py)
    monkeypatch.setattr(M.ceilings, "machine_load", lambda device: None)
    return tmp_path / "cache" / "ceilings.json"


def test_profile_writes_its_files(tmp_path, capsys, ceilings_cache):
    out, trace = tmp_path / "prof", tmp_path / "trace.json"
    args = ["profile", *TINY, "--no-fused", "--device", "cpu", "--memory-format", "channels_last",
            "--trace", str(trace), "--out", str(out)]
    assert main(args) == 0
    for name in ("profile.txt", "profile.csv", "profile.json", "profile.png", "roofline.png"):
        assert (out / name).is_file(), name
    assert "traceEvents" in json.loads(trace.read_text())
    printed = capsys.readouterr().out
    assert "body.stage1.0" in printed and str(out) in printed and str(trace) in printed
    wrote = next(line for line in printed.splitlines() if line.startswith("wrote "))
    assert "trace.json" not in wrote  # the trace is where --trace said, not in --out
    assert "seeded initialisation" in printed and "measured ceilings:" in printed
    rows = M.rows.read_csv(out / "profile.csv")
    assert rows[0]["input_shapes"] == "1x3x48x48" and rows[0]["ref_gbps"] > 0
    data = json.loads((out / "profile.json").read_text())
    assert data["settings"]["memory_format"] == "channels_last" and data["settings"]["compile"] is False
    cached = json.loads(ceilings_cache.read_text())  # measured once, cached in $FACEFUSE_CACHE
    [entry] = cached.values()
    assert entry["copy_gbps"] == data["ceilings"]["copy_gbps"] > 0 and entry["matmul_flops"] > 0


def test_profile_progress_goes_to_stderr(tmp_path, capsys):
    args = ["profile", "--size", "32", "--repeats", "1", "--warmup", "0", "--no-fused", "--no-compile",
            "--device", "cpu", "--out", str(tmp_path)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "[1/27] body.stage1.0 (conv_bn)" in err and "whole model" in err and "ceilings:" in err


def test_profile_loads_weights(tmp_path, capsys):
    weights = tmp_path / "w.pth"
    torch.save(M.models.build_model("retinaface", seed=3).state_dict(), weights)
    assert main(["profile", *TINY, "--no-fused", "--device", "cpu", "--weights", str(weights), "--out", str(tmp_path / "o")]) == 0
    assert "weights loaded from" in capsys.readouterr().out


def bad(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "usage:" in err and "Traceback" not in err
    return err


def test_unknown_model(capsys):
    assert "invalid choice: 'yolo'" in bad(["profile", "--model", "yolo"], capsys)
    assert "invalid choice: 'yolo'" in bad(["bench", "--model", "yolo", "--allow-cpu"], capsys)


@pytest.mark.parametrize("size", ["100", "128x64", "256x256"])
def test_arcface_takes_128_only(size, capsys):
    err = bad(["profile", "--model", "arcface-se", "--size", size], capsys)
    assert "128x128" in err and "--size" in err and "fc5" in err


@pytest.mark.parametrize("size", ["64x", "abc", "0", "3x4x5", "-1", "0x64", "64x0", "1.5"])
def test_malformed_size(size, capsys):
    assert "size must be" in bad(["profile", "--size", size], capsys)


def test_too_small_for_retinaface(capsys):
    assert "at least 32x32" in bad(["profile", "--size", "16"], capsys)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_cuda_without_cuda(capsys):
    """--device cuda where the kernels take no CUDA tensors: no CUDA device, or (the suite's
    interpreter run on a GPU machine) CUDA with TRITON_INTERPRET=1; each says its own reason."""
    expected = "TRITON_INTERPRET=1 is set" if torch.cuda.is_available() else "no CUDA device"
    assert expected in bad(["profile", "--device", "cuda"], capsys)


def test_cuda_under_the_interpreter(capsys, monkeypatch):
    """CUDA present but TRITON_INTERPRET=1 (on any machine, by pretending)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fused.runtime, "INTERPRETED", True)
    assert "TRITON_INTERPRET=1 is set" in bad(["profile", "--device", "cuda"], capsys)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("args", [["--cuda-graphs"], ["--record"], ["--device", "cpu", "--cuda-graphs"]])
def test_gpu_only_options_on_a_cpu(args, capsys):
    err = bad(["profile", *args], capsys)
    assert "CUDA" in err or "GPU" in err


def test_half_on_cpu(capsys):
    assert "float32" in bad(["profile", "--device", "cpu", "--dtype", "float16"], capsys)


@pytest.mark.parametrize("api, args", [
    (dict(dtype="float16", device="cpu"), ["--dtype", "float16", "--device", "cpu"]),
    (dict(model="arcface", size=100, device="cpu"), ["--model", "arcface", "--size", "100", "--device", "cpu"]),
    (dict(check_size=16, device="cpu"), ["--check-size", "16", "--device", "cpu"]),
    (dict(device="cpu", cuda_graphs=True), ["--device", "cpu", "--cuda-graphs"]),
])
def test_profile_and_the_command_check_options_alike(api, args, capsys):
    """One check, in fused.measure.models.profile_options, with one message for profile() and the CLI."""
    with pytest.raises(ValueError) as raised:
        M.profiler.profile(**api)
    assert str(raised.value) and str(raised.value) in bad(["profile", *args], capsys)


def test_bad_dtype_and_memory_format(capsys):
    assert "invalid choice: 'int8'" in bad(["profile", "--dtype", "int8"], capsys)
    assert "invalid choice: 'nhwc'" in bad(["profile", "--memory-format", "nhwc"], capsys)
    assert "invalid choice: 'fast'" in bad(["profile", "--compile-mode", "fast"], capsys)


def test_bad_numbers_and_missing_weights(capsys, tmp_path):
    assert "positive integer" in bad(["profile", "--repeats", "0"], capsys)
    assert "positive integer" in bad(["profile", "--batch", "two"], capsys)
    assert "positive integer, got '0'" in bad(["profile", "--batch", "0"], capsys)
    assert "positive integer, got '-3'" in bad(["profile", "--batch", "-3"], capsys)
    assert "non-negative integer" in bad(["profile", "--warmup", "-1"], capsys)
    assert "no file" in bad(["profile", "--weights", str(tmp_path / "missing.pth")], capsys)
    assert "is a folder" in bad(["profile", "--device", "cpu", "--trace", str(tmp_path)], capsys)


def test_mismatched_weights(tmp_path, capsys):
    weights = tmp_path / "arc.pth"
    torch.save(M.models.build_model("arcface").state_dict(), weights)
    assert "do not match" in bad(["profile", "--weights", str(weights), "--device", "cpu"], capsys)


def test_no_command(capsys):
    assert main([]) == 2


def test_ceilings_command_caches(capsys, ceilings_cache):
    assert main(["ceilings", "--device", "cpu"]) == 0
    first = capsys.readouterr().out
    assert "copy" in first and "GB/s" in first and "GFLOP/s" in first and str(ceilings_cache) in first
    assert ceilings_cache.is_file()
    assert main(["ceilings", "--device", "cpu"]) == 0  # the second call reads the cache
    assert f"cached in {ceilings_cache}" in capsys.readouterr().out


def test_results_command_prints_the_table(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["results"]) == 0
    assert "Generated by `python -m fused.measure.results --update-readme`" in capsys.readouterr().out
    assert main(["results", "--check"]) == 0  # the README's table is what results/ generates


def test_results_command_without_a_readme(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert "no README.md in the current directory" in bad(["results", "--check"], capsys)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_bench_refuses_cpu_without_allow_cpu(capsys):
    err = bad(["bench"], capsys)
    assert "needs a CUDA device" in err and "--allow-cpu" in err


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_bench_records_gpu_results_only(capsys):
    assert "GPU results only" in bad(["bench", "--allow-cpu", "--record"], capsys)


def test_bench_unknown_family(capsys):
    assert "invalid choice" in bad(["bench", "--family", "nope", "--allow-cpu"], capsys)


def test_python_dash_m_help():
    done = subprocess.run([sys.executable, "-m", "fused", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "profile" in done.stdout and "bench" in done.stdout
    done = subprocess.run([sys.executable, "-m", "fused", "profile", "--model", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "invalid choice" in done.stderr and "Traceback" not in done.stderr
