"""facefuse detect on a folder of real photos with trained weights from an ONNX file, in a fresh
process as a user runs it: faces where they are, none on the cat, EXIF-rotated JPEGs read the way
the user sees them, annotated copies drawn."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from fused.cli import main
from tests.real_photos import ASTRONAUT_FACE, iou, onnx_bytes, photo, require

ROOT = Path(__file__).resolve().parents[2]
#: EXIF Orientation 6: the stored pixels must be turned a quarter clockwise to be seen upright.
ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    require()
    root = tmp_path_factory.mktemp("real")
    photos = root / "photos"
    photos.mkdir()
    Image.fromarray(photo("astronaut")).save(photos / "astronaut.png")
    Image.fromarray(photo("camera")[..., 0]).save(photos / "cameraman.png")  # grayscale, one face
    Image.fromarray(photo("chelsea")).save(photos / "cat.png")
    Image.fromarray(photo("coffee")).save(photos / "coffee.jpg", quality=90)
    # The astronaut's top 400 rows (512 wide, 400 high as seen), stored a quarter turn anticlockwise
    # (400 wide, 512 high) with the EXIF tag that turns it back.
    upright = photo("astronaut")[:400]
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(upright))).save(photos / "sideways.jpg", quality=95, exif=exif)
    with Image.open(photos / "sideways.jpg") as stored:
        seen = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"), dtype=float)
    assert seen.shape == upright.shape and np.abs(seen - upright).mean() < 4  # the file is what we meant
    weights = root / "retinaface_mobilenet0.25.onnx"
    weights.write_bytes(onnx_bytes())
    out = root / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "fused", "detect", str(photos), "--weights", str(weights),
                          "--out", str(out), "--draw", "--no-fused", "--quiet"],
                         capture_output=True, text=True, env=env, timeout=600, cwd=root)
    assert run.returncode == 0, run.stdout + run.stderr
    records = {Path(p).name: json.loads(p.read_text()) for p in (out / "records").rglob("*.json")}
    records = {r["path"].replace("\\", "/").rsplit("/", 1)[1]: r for r in records.values()}
    return photos, out, records, run.stdout


def test_faces_found_where_they_are_and_none_on_the_cat(folder):
    photos, out, records, stdout = folder
    assert set(records) == {"astronaut.png", "cameraman.png", "cat.png", "coffee.jpg", "sideways.jpg"}
    astronaut = records["astronaut.png"]["faces"]
    assert len(astronaut) == 1 and astronaut[0]["score"] > 0.99
    assert iou(astronaut[0]["box"], ASTRONAUT_FACE) > 0.9
    assert len(records["cameraman.png"]["faces"]) == 1
    assert records["cat.png"]["faces"] == [] and records["coffee.jpg"]["faces"] == []
    assert "3 faces" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weights"].endswith(".onnx") and summary["faces"] == 3


def test_an_exif_rotated_jpeg_is_read_upright(folder):
    _, _, records, _ = folder
    sideways = records["sideways.jpg"]
    assert (sideways["width"], sideways["height"]) == (512, 400)  # as seen, not as stored (400 x 512)
    (face,) = sideways["faces"]
    assert iou(face["box"], ASTRONAUT_FACE) > 0.9  # in the upright picture's pixels
    left_eye, right_eye, nose = face["landmarks"][:3]
    assert left_eye[0] < nose[0] < right_eye[0] and nose[1] > max(left_eye[1], right_eye[1])


def test_annotated_copies_are_drawn_on_the_faces(folder):
    photos, out, records, _ = folder
    drawn = {p.name: p for p in (out / "drawn").rglob("*") if p.is_file()}
    assert set(drawn) == set(records)
    for name in ("astronaut.png", "sideways.jpg"):
        with Image.open(drawn[name]) as image:
            picture = np.asarray(image.convert("RGB"), dtype=int)
        with Image.open(photos / name) as source:
            original = np.asarray(ImageOps.exif_transpose(source).convert("RGB"), dtype=int)
        assert picture.shape == original.shape  # drawn upright, at full size
        x1, y1, x2, y2 = (round(v) for v in records[name]["faces"][0]["box"])
        changed = np.abs(picture - original).sum(axis=2) > 60
        assert changed[y1 + 1:y2, x1 - 1:x1 + 2].any(axis=1).mean() > 0.8  # the box's left edge is drawn
        assert changed[:, : max(x1 - 10, 0)].mean() < 0.02  # little else left of it
    with Image.open(drawn["cat.png"]) as cat, Image.open(photos / "cat.png") as source:
        assert np.array_equal(np.asarray(cat.convert("RGB")), np.asarray(source.convert("RGB")))  # nothing drawn


def test_detect_without_onnx_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    weights = tmp_path / "model.onnx"
    weights.write_bytes(b"\x08\x06 an ONNX file")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setitem(sys.modules, "onnx", None)
    code = main(["detect", str(tmp_path / "a.png"), "--weights", str(weights), "--out", str(tmp_path / "out"),
                 "--no-fused", "--quiet"])
    assert code == 2
    assert "needs the onnx package: pip install onnx" in capsys.readouterr().err
