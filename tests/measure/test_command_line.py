"""What a newcomer and a hostile input meet in the command line: quick --help and usage errors
(torch not even imported), outputs checked before the work, record and drawn names that always
fit and never collide, reusing an --out folder, the exit statuses. Tiny images, unfused."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import reference
from fused.apps import outputs, run
from fused.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = ["--conf", "0.05", "--no-fused", "--quiet", "--threads", "1"]


def image(path, height=40, width=40, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def fresh(code: str, *argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv, *(("-c", code) if code else ())], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})


# -- speed: parse first, import torch late ------------------------------------------------------


@pytest.mark.parametrize("argv, status", [
    (["--help"], 0), (["detect", "--help"], 0), (["embed", "--help"], 0), (["profile", "--help"], 0),
    (["detect", "no-such-folder", "--out", "o"], 2), (["detect", "x.png"], 2), (["profile", "--size", "0"], 2),
    (["embed", ".", "--out", "o", "--conf", "2"], 2), (["nope"], 2),
])
def test_help_and_usage_errors_do_not_import_torch(argv, status):
    """As the facefuse script runs: torch is not imported for --help or a usage error."""
    code = ("import sys\nsys.argv = ['facefuse'] + %r\nfrom fused.cli import main\nstatus = main()\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', status)" % argv)
    done = fresh(code)
    assert done.stdout.split()[-2:] == ["NO-TORCH", str(status)], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_python_dash_m_fused_help_imports_no_torch():
    done = fresh(None, "-X", "importtime", "-m", "fused", "--help")
    assert done.returncode == 0 and "detect" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "fused" in imported and "torch" not in imported and "triton" not in imported


def test_the_library_still_imports_everything():
    done = fresh("import sys, fused\nprint('torch' in sys.modules, len(fused.REGISTRY) > 5, fused.fuse.__name__)")
    assert done.stdout.split() == ["True", "True", "fuse"], done.stderr[-2000:]


# -- outputs checked before the work -------------------------------------------------------------


@pytest.mark.parametrize("command", [["profile", "--no-fused", "--no-compile"], ["bench", "--allow-cpu"],
                                     ["inspect"], ["detect", "IMAGE"], ["embed", "IMAGE"]])
@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_unwritable_outputs_are_usage_errors_before_the_work(tmp_path, capsys, monkeypatch, command, where):
    picture = image(tmp_path / "a.png")
    (tmp_path / "file").write_text("x")
    target = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "out",
              "read-only": tmp_path / "ro" / "out"}[where]
    if where == "read-only":  # root ignores permission bits: make writing fail as a read-only mount does
        import tempfile

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and str(tmp_path / "ro") in str(dir):
                raise OSError(30, "Read-only file system")
            return real_tempfile(*args, dir=dir, **kwargs)

        real_tempfile = tempfile.TemporaryFile
        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    monkeypatch.setattr(run, "start", lambda *a, **k: pytest.fail("the work started"))
    argv = [str(picture) if a == "IMAGE" else a for a in command]
    assert main([*argv, "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and ("not a folder" in err or "is a file" in err or "Read-only" in err), err


def test_a_usage_error_leaves_no_empty_output_folder(tmp_path, capsys):
    assert main(["profile", "--record", "--device", "cpu", "--out", str(tmp_path / "new" / "prof")]) == 2
    assert "GPU results only" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_a_trace_that_is_a_folder(tmp_path, capsys):
    assert main(["profile", "--trace", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--trace" in capsys.readouterr().err


def test_a_read_only_place_without_simulation(tmp_path, capsys):
    """/proc/self takes no new files, for root too."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    assert main(["detect", str(image(tmp_path / "a.png")), "--out", "/proc/self"]) == 2
    assert "cannot write there" in capsys.readouterr().err


# -- names ---------------------------------------------------------------------------------------


def test_a_long_file_name_gets_a_record_that_fits(tmp_path):
    long = "é" * 123 + ".png"  # a legal name of 250 bytes in UTF-8: with ".json" it would pass 255
    image(tmp_path / "in" / long)
    image(tmp_path / "in" / "b.png", seed=1)
    out = tmp_path / "out"
    assert main(["detect", str(tmp_path / "in"), "--out", str(out), *FAST, "--draw"]) == 0
    names = sorted(p.name for p in (out / "records" / "in").iterdir())
    assert len(names) == 2 and all(len(os.fsencode(n)) <= 255 for n in names)
    assert json.loads((out / "summary.json").read_text())["done"] == 2
    assert outputs.fit("a" * 300, ".json") != outputs.fit("a" * 299 + "b", ".json")  # distinct stay distinct


def test_one_record_that_cannot_be_written_loses_no_batch(tmp_path, monkeypatch):
    for i, name in enumerate("abc"):
        image(tmp_path / "in" / f"{name}.png", seed=i)
    real = outputs.Records.write

    def write(self, record, name):
        if name.endswith("b.png"):
            raise OSError(36, "File name too long")
        return real(self, record, name)

    monkeypatch.setattr(outputs.Records, "write", write)
    out = tmp_path / "out"
    assert main(["detect", str(tmp_path / "in"), "--out", str(out), *FAST]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == 2 and summary["finished"] and "File name too long" in summary["skipped"][0]["error"]
    assert sorted(p.name for p in (out / "records" / "in").iterdir()) == ["a.png.json", "c.png.json"]


def test_drawn_copies_never_collide(tmp_path):
    assert outputs.drawn_names(["a.bmp", "a.bmp.png", "b.jpg"]) == {"a.bmp.png": "a.bmp.png", "a.bmp": "a.bmp-1.png",
                                                                     "b.jpg": "b.jpg"}
    image(tmp_path / "in" / "a.bmp")
    image(tmp_path / "in" / "a.bmp.png", seed=1)
    assert main(["detect", str(tmp_path / "in"), "--out", str(tmp_path / "out"), *FAST, "--draw"]) == 0
    assert len(list((tmp_path / "out" / "drawn" / "in").iterdir())) == 2


def test_landmark_dots_scale_with_the_face(tmp_path):
    """A 20-pixel face on a 4000-pixel-wide image gets dots a few pixels wide, not the image's size."""
    face = {"box": [100, 100, 120, 120], "score": 0.9, "landmarks": [[105, 105], [115, 105], [110, 110], [106, 115],
                                                                      [114, 115]]}
    path = tmp_path / "d.png"
    outputs.draw(np.zeros((400, 4000, 3), np.uint8), [face], path)
    red = (np.asarray(Image.open(path)) == [255, 0, 0]).all(axis=2).sum()
    assert 0 < red <= 12


@pytest.mark.skipif(sys.platform != "linux", reason="file names of any bytes: Linux")
def test_embed_with_a_file_name_that_is_not_utf8(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")
    image(folder / name)
    out = tmp_path / "out"
    assert main(["embed", str(folder), "--out", str(out), *FAST, "--conf", "0.3", "--iou", "0.05"]) == 0
    rows = list(csv.reader(open(out / "similarity.csv", encoding="utf-8")))
    assert rows[1][0].startswith("in/caf\\xe9.png#")
    assert json.loads((out / "summary.json").read_text())["finished"]


# -- reusing --out ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [[], ["--jsonl"]])
def test_reusing_out_resumes_refuses_or_overwrites(tmp_path, capsys, mode):
    image(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    assert main(["detect", str(tmp_path / "in"), "--out", str(out), *FAST, *mode]) == 0
    image(tmp_path / "in" / "b.png", seed=1)
    capsys.readouterr()
    assert main(["detect", str(tmp_path / "in"), "--out", str(out), *FAST, *mode]) == 0  # same options: resumed
    err = capsys.readouterr().err
    assert "resuming" in err and "1 of 2 images already recorded" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == 2 and summary["resumed"] == 1 and summary["timing"]["count"] == 1
    assert main(["detect", str(tmp_path / "in"), "--out", str(out), *FAST, *mode, "--conf", "0.5"]) == 2
    assert "other options (conf: 0.05 then, 0.5 now)" in capsys.readouterr().err
    assert main(["detect", str(tmp_path / "in"), "--out", str(out), *FAST, *mode, "--conf", "0.5", "--overwrite"]) == 0
    assert "--overwrite: deleted" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["resumed"] == 0


def test_outputs_of_an_unknown_run_are_refused(tmp_path, capsys):
    (tmp_path / "out" / "records").mkdir(parents=True)
    assert main(["detect", str(image(tmp_path / "a.png")), "--out", str(tmp_path / "out"), *FAST]) == 2
    assert "no readable run.json" in capsys.readouterr().err


def test_embed_resumes_with_the_earlier_faces(tmp_path):
    image(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    args = ["embed", str(tmp_path / "in"), "--out", str(out), *FAST, "--conf", "0.3", "--iou", "0.05", "--jsonl"]
    assert main(args) == 0
    first = np.load(out / "embeddings.npy")
    image(tmp_path / "in" / "b.png", seed=1)
    assert main(args) == 0
    both = np.load(out / "embeddings.npy")
    assert len(both) > len(first) > 0 and np.array_equal(both[:len(first)], first)
    assert (out / "records.jsonl").is_file()  # embed --jsonl writes the records
    assert len((out / "faces.jsonl").read_text().splitlines()) == len(both)


# -- options that said one thing and did another -------------------------------------------------


def test_embed_draw_is_an_error_of_embed(tmp_path, capsys):
    assert main(["embed", str(image(tmp_path / "a.png")), "--out", str(tmp_path / "o"), "--draw"]) == 2
    err = capsys.readouterr().err
    assert "facefuse embed: error: unrecognized arguments: --draw" in err and "usage: facefuse embed" in err


@pytest.mark.parametrize("extra", [["--batch", "0"], ["--size", "0"]])
def test_inspect_zero_is_a_usage_error(capsys, extra):
    assert main(["inspect", "--model", "retinaface", *extra]) == 2
    assert "expected a positive integer" in capsys.readouterr().err


def test_a_failed_download_has_its_own_status_and_whole_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FACEFUSE_WEIGHTS_URL", str(tmp_path / "no-mirror"))
    monkeypatch.setenv("FACEFUSE_WEIGHTS_DIR", str(tmp_path / "cache"))
    status = main(["detect", str(image(tmp_path / "a.png")), "--out", str(tmp_path / "o"), "--pretrained", "--quiet"])
    err = capsys.readouterr().err
    assert status == run.DOWNLOAD_FAILED == 3
    assert "could not download" in err and "reference.load_weights(model, path)" in err  # the fix, at its end


def test_threads_are_fixed_and_compare_reports_a_median(tmp_path, monkeypatch):
    from fused.measure import timing

    monkeypatch.setattr(timing, "cpu_threads", lambda: 1)
    out = tmp_path / "o"
    assert main(["detect", str(image(tmp_path / "a.png")), "--out", str(out), "--conf", "0.05", "--no-fused",
                 "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["threads"] == 1
    times = iter([[1.0, 2.0, 9.0], [5.0]])  # unfused: 3 runs after a warm-up; fused (interpreted): 1
    monkeypatch.setattr(run, "timed", lambda fn, device, repeats=1: (None, next(times)))
    timings = run.Timings("detection", False)
    import torch

    timings.compare(lambda: None, 1, torch.device("cpu"))
    assert timings.compared == {"unfused": 2000.0, "fused": 5000.0}  # medians, as the run's own line


# -- results ------------------------------------------------------------------------------------------


def test_results_with_a_missing_folder_leaves_the_readme(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- results-table:start -->\nold\n<!-- results-table:end -->\n")
    status = main(["results", "--update-readme", "--results-dir", str(tmp_path / "nope"), "--readme", str(readme)])
    assert status == 2 and "no such folder" in capsys.readouterr().err
    assert "old" in readme.read_text()


def test_results_skip_json_that_is_not_a_result(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "x.json").write_text("{}")
    assert main(["results", "--results-dir", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr()
    assert "not a facefuse benchmark or profile result" in printed.err and "Benchmark" not in printed.out
