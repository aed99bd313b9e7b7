"""facefuse detect and facefuse embed on small generated images (random weights, a low --conf so
that faces are found): records, batching by size, skipped files, drawings, embeddings, timings."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import reference
from fused.apps import files
from fused.cli import main


def image(path, height, width, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def photos(tmp_path):
    """Three 64x64 images (one in a subfolder), one 48x80, one too small, one that is not an image."""
    root = tmp_path / "photos"
    image(root / "a.png", 64, 64, 0)
    image(root / "b.jpg", 64, 64, 1)
    image(root / "sub" / "c.png", 64, 64, 2)
    image(root / "wide.png", 48, 80, 3)
    image(root / "tiny.png", 20, 20, 4)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    (root / "notes.txt").write_text("not an image, not picked up from a folder")
    return root


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_detect_folder(photos, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["detect", str(photos), "--out", str(out), "--conf", "0.05", "--no-fused", "--jsonl", "--draw"])
    assert code == 1  # some files were skipped; the others' records are written
    records = {r["path"].replace("\\", "/").split("photos/")[1]: r for r in jsonl(out / "records.jsonl")}
    assert set(records) == {"a.png", "b.jpg", "sub/c.png", "wide.png", "tiny.png", "broken.jpg"}
    assert "cannot read the image" in records["broken.jpg"]["error"]
    assert "too small" in records["tiny.png"]["error"]
    square = [records[n] for n in ("a.png", "b.jpg", "sub/c.png")]
    assert [r["batch"] for r in square] == [3, 3, 3] and records["wide.png"]["batch"] == 1  # batched by size
    wide = records["wide.png"]
    assert (wide["width"], wide["height"], wide["input_size"]) == (80, 48, [80, 48])
    assert all(r["faces"] for r in square)
    face = square[0]["faces"][0]
    assert len(face["box"]) == 4 and 0 < face["score"] <= 1 and np.array(face["landmarks"]).shape == (5, 2)
    assert square[0]["time_ms"] > 0 and square[0]["fused"] is False
    for name in ("a.png", "b.jpg", "sub/c.png", "wide.png"):
        drawn = out / "drawn" / "photos" / name
        with Image.open(drawn) as d:
            assert d.size == (records[name]["width"], records[name]["height"])
    assert not (out / "drawn" / "photos" / "broken.jpg").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == 4 and len(summary["skipped"]) == 2 and summary["finished"]
    assert summary["timing"]["mode"] == "unfused" and summary["timing"]["median_ms_per_unit"] > 0
    printed = capsys.readouterr()
    assert "4 images" in printed.out and "2 skipped" in printed.out and "detection: unfused" in printed.out
    assert "--compare" in printed.out
    assert "skipped " in printed.err and "broken.jpg" in printed.err and "random weights" in printed.err
    assert "images/s" in printed.err


def test_detect_fused_and_compared(tmp_path, capsys):
    """The toggle is visible: --fused --compare times the first batch both ways, and the fused
    records match the unfused ones."""
    image(tmp_path / "one.png", 40, 40, 5)
    code = main(["detect", str(tmp_path / "one.png"), "--out", str(tmp_path / "f"), "--conf", "0.3",
                 "--fused", "--compare", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "detection: fused (Triton's interpreter" in printed and "first batch both ways (median of the runs after a warm-up): fused" in printed
    timing = json.loads((tmp_path / "f" / "summary.json").read_text())["timing"]
    assert set(timing["compared_ms_per_unit"]) == {"fused", "unfused"}
    assert main(["detect", str(tmp_path / "one.png"), "--out", str(tmp_path / "u"), "--conf", "0.3", "--quiet"]) == 0
    fused_rec = json.loads((tmp_path / "f" / "records" / "one.png.json").read_text())
    plain = json.loads((tmp_path / "u" / "records" / "one.png.json").read_text())
    assert fused_rec["fused"] and not plain["fused"] and len(fused_rec["faces"]) == len(plain["faces"]) > 0
    for a, b in zip(fused_rec["faces"], plain["faces"]):
        np.testing.assert_allclose(a["box"], b["box"], atol=0.05)


def test_max_size_reports_original_pixels(tmp_path):
    image(tmp_path / "big.png", 96, 160, 6)
    out = tmp_path / "out"
    main(["detect", str(tmp_path / "big.png"), "--out", str(out), "--conf", "0.05", "--max-size", "80",
          "--quiet", "--jsonl"])
    (record,) = jsonl(out / "records.jsonl")
    assert (record["width"], record["height"], record["input_size"]) == (160, 96, [80, 48])
    boxes = np.array([f["box"] for f in record["faces"]])
    # the same image detected at 80x48 directly, boxes scaled by 2
    small = np.asarray(Image.open(tmp_path / "big.png").convert("RGB").resize((80, 48), Image.BILINEAR))
    model = reference.randomize_batchnorm(reference.retinaface())
    direct = reference.detect(model, small, conf=0.05, channel_order="rgb")[0].boxes.numpy() * 2
    np.testing.assert_allclose(boxes, direct, atol=0.02)


def test_an_interrupt_keeps_the_records_written(photos, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_load, calls = files.load, []

    def load(item):
        calls.append(item)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_load(item)

    monkeypatch.setattr(files, "load", load)
    assert main(["detect", str(photos), "--out", str(out), "--conf", "0.05", "--batch", "1", "--jsonl", "--quiet"]) == 130
    records = jsonl(out / "records.jsonl")
    assert sum("faces" in r for r in records) == 2 and sum("error" in r for r in records) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is False and summary["done"] == 2
    assert summary["timing"]["count"] >= 1 and summary["timing"]["median_ms_per_unit"] > 0  # the images timed


def test_embed(tmp_path, capsys):
    image(tmp_path / "in" / "a.png", 64, 64, 0)
    image(tmp_path / "in" / "b.png", 48, 64, 7)
    (tmp_path / "in" / "bad.png").write_bytes(b"")
    out = tmp_path / "out"
    code = main(["embed", str(tmp_path / "in"), "--out", str(out), "--conf", "0.5", "--iou", "0.05", "--no-fused"])
    assert code == 1
    embeddings = np.load(out / "embeddings.npy")
    index = jsonl(out / "faces.jsonl")
    n = len(index)
    assert n > 0 and embeddings.shape == (n, 512) and embeddings.dtype == np.float32
    assert [r["row"] for r in index] == list(range(n)) and index[0]["label"] == "in/a.png#0"
    rows = list(csv.reader(open(out / "similarity.csv")))
    assert rows[0] == ["face", "rank", "neighbour", "similarity"] and len(rows) == n * min(10, n - 1) + 1  # --top-k 10
    expected = reference.cosine_similarity(torch.from_numpy(embeddings)).numpy()
    labels = [r["label"] for r in index]
    for face, rank, neighbour, value in rows[1:]:
        i, j = labels.index(face), labels.index(neighbour)
        assert i != j and abs(float(value) - expected[i, j]) < 1e-5
        others = sorted((expected[i, k] for k in range(n) if k != i), reverse=True)
        assert abs(float(value) - others[int(rank) - 1]) < 1e-5  # rank 1 is the most similar
    summary = json.loads((out / "summary.json").read_text())
    assert summary["faces"] == n and summary["timing"]["embedding"]["unit"] == "face"
    printed = capsys.readouterr()
    assert f"({n}, 512)" in printed.out and "embedding: unfused" in printed.out and "bad.png" in printed.err


def test_embed_with_no_faces(tmp_path):
    image(tmp_path / "a.png", 64, 64, 0)
    out = tmp_path / "out"
    assert main(["embed", str(tmp_path / "a.png"), "--out", str(out), "--conf", "1", "--quiet"]) == 0
    assert np.load(out / "embeddings.npy").shape == (0, 512)
    assert (out / "faces.jsonl").read_text() == "" and (out / "similarity.csv").read_text().strip() == "face,rank,neighbour,similarity"


def test_pretrained_from_a_mirror(tmp_path, monkeypatch, capsys):
    """--pretrained takes the released file from $FACEFUSE_WEIGHTS_URL (here a local folder) into the cache."""
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    released = reference.randomize_batchnorm(reference.retinaface(seed=9), seed=9)
    torch.save(released.state_dict(), mirror / "detection_mobilenet0.25_Final.pth")
    monkeypatch.setenv("FACEFUSE_WEIGHTS_URL", str(mirror))
    monkeypatch.setenv("FACEFUSE_WEIGHTS_DIR", str(cache))
    image(tmp_path / "a.png", 64, 64, 0)
    assert main(["detect", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--conf", "0.05",
                 "--pretrained", "--jsonl"]) == 0
    assert (cache / "detection_mobilenet0.25_Final.pth").is_file()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["weights"] == "released"
    (record,) = jsonl(tmp_path / "out" / "records.jsonl")
    expected = reference.detect(released, np.asarray(Image.open(tmp_path / "a.png")), conf=0.05, channel_order="rgb")[0]
    np.testing.assert_allclose([f["score"] for f in record["faces"]], expected.scores.numpy(), atol=1e-4)
    assert "random weights" not in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--conf", "2"], "argument --conf: expected a number in [0, 1]"),
    (["--conf", "nan"], "argument --conf: expected a number in [0, 1]"),
    (["--batch", "0"], "argument --batch: expected a positive integer"),
    (["--threads", "0"], "argument --threads: expected a positive integer"),
    (["--weights", "x.pth", "--pretrained"], "not allowed with argument"),
    (["--weights", "WEIGHTS"], "detector weights:"),
])
def test_usage_errors(tmp_path, capsys, extra, message):
    image(tmp_path / "a.png", 64, 64, 0)
    (tmp_path / "w.pth").write_text("<html>not found</html>")
    extra = [str(tmp_path / "w.pth") if e == "WEIGHTS" else e for e in extra]
    assert main(["detect", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_no_images_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["embed", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "no images found" in capsys.readouterr().err


def test_output_folder_inside_the_input_is_not_read(photos, tmp_path):
    image(photos / "found" / "drawn" / "old.png", 64, 64, 8)
    items = files.find_images([photos], exclude=photos / "found")
    assert "photos/found/drawn/old.png" not in [i.name.replace("\\", "/") for i in items]
    assert len(items) == 6
    image(tmp_path / "other" / "a.png", 64, 64, 9)
    names = [i.name for i in files.find_images([photos / "a.png", tmp_path / "other" / "a.png", tmp_path / "nope.png"])]
    assert names == ["a.png", "a-1.png", "nope.png"]


def test_in_a_fresh_process(tmp_path):
    """As a user runs it: python -m fused detect, in a new process, from another folder."""
    import os
    import subprocess
    import sys

    import fused

    image(tmp_path / "a.png", 64, 64, 0)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fused.__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "fused", "detect", "a.png", "--out", "out", "--conf", "0.05", "--jsonl"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "1 images" in done.stdout and "images/s" in done.stderr and "Traceback" not in done.stderr
    (record,) = jsonl(tmp_path / "out" / "records.jsonl")
    assert record["path"] == "a.png" and record["faces"]
