"""Recorded results: the README's table is generated from results/*.json, and from nothing else."""

import json
import shutil
from pathlib import Path

import pytest

import fused.measure as M
from fused.measure import benchmark as B
from fused.measure import results
from fused.measure.ceilings import Ceilings

ROOT = Path(__file__).resolve().parent.parent.parent
GPU_ENV = {"device": "cuda", "gpu": "NVIDIA Test GPU 80GB", "driver": "555.42", "torch": "2.11.0",
           "triton": "3.6.0", "cuda": "12.8", "date": "2025-06-01T12:00:00+00:00"}


def synthetic_bench(folder):
    """A benchmark JSON in the real format (written by benchmark.write_results), with GPU numbers put
    in by hand: what `facefuse bench --record` leaves in results/."""
    rows = []
    for name, eager, fused_ms, status in [("conv_bn 3->8 k3 s2 1x3x640x640", 0.050, 0.020, "ok"),
                                          ("conv_bn 8->16 k3 s1 1x8x320x320", 0.080, None, "failed")]:
        r = {c: None for c in B.COLUMNS}
        r.update(case=name, family="conv_bn", shape=name.split()[-1], dtype="float16", device="cuda", status=status,
                 eager_ms=eager, eager_cl_ms=0.045, compile_ms=0.030, bytes_moved=1_000_000, roofline_gbps=4000.0)
        if fused_ms:
            r.update(fused_ms=fused_ms, fused_cl_ms=0.025, fused_best_layout="nchw", speedup_eager=eager / fused_ms,
                     speedup_eager_cl=0.045 / fused_ms, speedup_compile=0.030 / fused_ms,
                     fused_gbps=1_000_000 / (fused_ms * 1e-3) / 1e9, roofline_pct=100 * 50.0 / 4000.0)
        else:
            r["error"] = "out of tolerance"
        rows.append(r)
    paths = B.write_results(rows, folder / "out", device="cpu", settings={"dtype": "float16", "cuda_graphs": True,
                                                                        "compile_mode": "max-autotune"})
    data = json.loads(open(paths["json"]).read())
    data["environment"].update(GPU_ENV)
    data["bandwidth_gbps"] = 4000.0
    with open(paths["json"], "w") as f:
        json.dump(data, f)
    return paths


def synthetic_profile(folder):
    """A profile JSON in the real format (Profile.write_json) with GPU numbers put in by hand."""
    rows = [
        M.rows.Row(kind="block", path="body.stage1.0", block_type="conv_bn", flops=10, min_bytes=100, ref_median_ms=0.5,
              compile_median_ms=0.25, fused_median_ms=0.1, speedup=5.0, speedup_vs_compile=2.5, fused_gbps=1.0,
              fused_bw_pct=0.025, fused_peak_bytes=2_000_000),
        M.rows.Row(kind="block", path="ssh1", block_type="SSH", ref_median_ms=0.9, fused_median_ms=0.3, speedup=3.0),
        M.rows.Row(kind="sum", path=M.rows.SUM, block_type="", ref_median_ms=1.4, fused_median_ms=0.4, speedup=3.5),
        M.rows.Row(kind="outside", path=M.rows.OUTSIDE, block_type="", ref_median_ms=0.1),
        M.rows.Row(kind="total", path=M.rows.TOTAL, block_type="RetinaFace", ref_median_ms=1.5, fused_median_ms=0.45,
              speedup=1.5 / 0.45),
    ]
    ceil = Ceilings("cuda", "NVIDIA Test GPU 80GB", "2.11.0", 4000.0, 900e12, "float16", 8192, 2**29, "cuda-event",
                    GPU_ENV["date"])
    prof = M.rows.Profile(rows, {"model": "retinaface", "input_shape": "1x3x640x640", "dtype": "float16",
                            "memory_format": "nchw", "cuda_graphs": True}, dict(GPU_ENV), [], "", ceil.to_dict())
    paths = prof.save(folder / "prof")
    return paths


def test_readme_table_is_generated_from_the_repository_results():
    """The README's block between the markers is exactly what results_table() makes of results/;
    `python -m fused.measure.results --update-readme` rewrites it after a recording."""
    assert results.readme_block(ROOT / "README.md") == results.results_table(ROOT / "results")
    assert results.main(["--check", "--readme", str(ROOT / "README.md"), "--results-dir", str(ROOT / "results")]) == 0


def test_files_are_found_from_the_current_directory(tmp_path, monkeypatch, capsys):
    """The README is ./README.md and results/ is the project folder's (this directory or a parent),
    never a path relative to the installed package; without a README the error says what to do."""
    project = tmp_path / "project"
    (project / "results").mkdir(parents=True)
    (project / "lessons").mkdir()
    readme = project / "README.md"
    readme.write_text(f"# p\n{results.START}\nold\n{results.END}\n")
    bench = synthetic_bench(tmp_path)
    monkeypatch.chdir(project)
    recorded = results.record(bench["json"])
    assert Path(recorded[0]).parent == project / "results"
    assert results.main(["--update-readme"]) == 0
    assert results.readme_block(readme) == results.results_table(project / "results") != "old"
    monkeypatch.chdir(project / "lessons")  # a lesson's working directory finds the same recordings
    assert results.recorded("conv_bn")[0]["_file"] == Path(recorded[0]).name
    assert results.main(["--check"]) == 2  # but the README is the current directory's only
    assert "no README.md in the current directory" in capsys.readouterr().err


def test_empty_results_say_so(tmp_path, capsys):
    table = results.results_table(tmp_path)
    assert results.NONE_RECORDED in table and "|" not in table
    assert results.show_recorded("conv_bn", tmp_path) == [] and results.show_recorded_profiles(results_dir=tmp_path) == []
    printed = capsys.readouterr().out
    assert "No GPU results are recorded for 'conv_bn' yet" in printed and "No GPU profile is recorded" in printed


def test_table_from_synthetic_results(tmp_path, capsys):
    folder = tmp_path / "results"
    bench = synthetic_bench(tmp_path)
    recorded = results.record(bench["json"], {".png": bench["chart"]}, results_dir=folder)
    assert [p.rsplit("/", 1)[1] for p in recorded] == ["conv-bn-nvidia-test-gpu-80gb-2025-06-01t12-00-00-00-00.json",
                                                        "conv-bn-nvidia-test-gpu-80gb-2025-06-01t12-00-00-00-00.png"]
    prof = synthetic_profile(tmp_path)
    results.record(prof["json"], {".png": prof["chart"], "-roofline.png": prof["roofline"]}, results_dir=folder)

    table = results.results_table(folder)
    lines = table.splitlines()
    assert results.NONE_RECORDED not in table
    assert "NVIDIA Test GPU 80GB (driver 555.42), torch 2.11.0, Triton 3.6.0, measured 2025-06-01T12:00:00+00:00" in table
    assert "copy bandwidth 4000 GB/s" in table and "float16, CUDA graphs, torch.compile max-autotune" in table
    assert "| " + " | ".join(results.BENCH_HEADER) + " |" in lines
    # the numbers come from the data: 0.05 / 0.02 = 2.50x, 50 GB/s = 1.25% of 4000 GB/s
    assert "| conv_bn | conv_bn 3->8 k3 s2 1x3x640x640 | ok | 0.05 | 0.045 | 0.03 | 0.02 | 2.50 | 2.25 | 1.50 | 50 | 1 |" in lines
    assert "| conv_bn | conv_bn 8->16 k3 s1 1x8x320x320 | failed | 0.08 | 0.045 | 0.03 |  |  |  |  |  |  |" in lines
    assert "[`results/conv-bn-nvidia-test-gpu-80gb-2025-06-01t12-00-00-00-00.png`]" in table
    # the profile: its slowest blocks first, then the totals
    assert "`facefuse profile --model retinaface`, input 1x3x640x640 float16 nchw, CUDA graphs on" in table
    order = [next(i for i, line in enumerate(lines) if line.startswith(f"| {path} |"))
             for path in ("ssh1", "body.stage1.0", M.rows.SUM, M.rows.TOTAL)]
    assert order == sorted(order)
    assert "| body.stage1.0 | conv_bn | 0.5 | 0.25 | 0.1 | 5.00 | 2.50 | 1 | 0 | 2 |" in lines
    assert "-roofline.png" in table

    # update_readme writes exactly that between the markers, and nothing else changes
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n\nbefore\n\n{results.START}\nold text\n{results.END}\n\nafter\n")
    assert results.update_readme(readme, folder) is True
    assert results.readme_block(readme) == table
    assert readme.read_text().startswith("# t\n\nbefore\n\n") and readme.read_text().endswith("\n\nafter\n")
    assert results.update_readme(readme, folder) is False  # already up to date
    assert results.main(["--check", "--readme", str(readme), "--results-dir", str(folder)]) == 0
    shutil.copyfile(bench["json"], folder / "zz-newer.json")  # a new recording: the README is stale
    assert results.main(["--check", "--readme", str(readme), "--results-dir", str(folder)]) == 1

    # the lessons' cells read the same files
    capsys.readouterr()
    [run] = results.recorded_profiles("retinaface", folder)
    assert results.show_recorded_profiles("retinaface", folder) == [run]
    assert results.show_recorded("conv_bn", folder)[0]["environment"]["gpu"] == "NVIDIA Test GPU 80GB"
    printed = capsys.readouterr().out
    assert "NVIDIA Test GPU 80GB" in printed and "ssh1" in printed and "speedup_eager=2.5" in printed


def test_readme_markers_are_required(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="markers"):
        results.update_readme(readme, tmp_path)
    assert results.main(["--check", "--readme", str(readme)]) == 2

