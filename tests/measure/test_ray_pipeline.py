"""facefuse detect/embed --engine ray on a local Ray cluster (2 CPUs, started once for the module):
records equal to the single-process commands', bad images recorded, resume after the driver is
killed, a worker killed mid-batch. Small images, random weights, a low --conf so faces are found."""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fused.apps import ray_pipeline
from fused.cli import main

ROOT = Path(__file__).resolve().parents[2]
#: The thresholds every run here uses (random weights: many "faces" at a low threshold).
THRESHOLDS = ["--conf", "0.5", "--iou", "0.05", "--batch", "2", "--no-fused", "--device", "cpu"]
SETTINGS = dict(conf=0.5, iou=0.05, batch=2, fused=False, device="cpu")


def photo(which: str, height: int, width: int) -> Image.Image:
    """A real photo (scikit-image's astronaut or cat) when scikit-image is installed, else noise."""
    try:
        from skimage import data

        array = getattr(data, which)()
    except ImportError:
        array = np.random.default_rng(len(which)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(array).resize((width, height), Image.BILINEAR)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Real photos (one rotated by its EXIF orientation), generated images of one size (so that
    they batch), and bad files: empty, truncated, not an image, too small."""
    root = tmp_path_factory.mktemp("corpus") / "photos"
    (root / "sub").mkdir(parents=True)
    photo("astronaut", 96, 96).save(root / "astronaut.png")
    photo("chelsea", 64, 96).save(root / "chelsea.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64x96 (w x h), shown turned a quarter: 96x64
    photo("chelsea", 64, 96).rotate(90, expand=True).save(root / "sub" / "rotated.jpg", exif=exif)
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / f"n{i}.png")
    jpeg = io.BytesIO()
    photo("astronaut", 96, 96).save(jpeg, format="JPEG")
    (root / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image")
    Image.new("RGB", (20, 20)).save(root / "tiny.png")
    return root


@pytest.fixture(scope="module")
def cluster(corpus):
    """One local Ray cluster (2 CPUs) for the module: its start-up is paid once. Its workers
    import this checkout's ``fused`` (PYTHONPATH)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved]))
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield context.address_info["gcs_address"]
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = saved


def records(path: Path) -> dict:
    """Single-process JSONL records by path, without the time (the one field that differs)."""
    out = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        record.pop("time_ms", None)
        out[record["path"]] = record
    return out


def ray_records(out: Path) -> dict:
    import pyarrow.parquet as pq

    rows = [row for f in sorted((out / "parquet").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]
    assert len({row["name"] for row in rows}) == len(rows), "an image written twice"
    found = {}
    for row in rows:
        record = ray_pipeline.record_of(row)
        record.pop("time_ms", None)
        found[record["path"]] = record
    return found


@pytest.fixture(scope="module")
def single(corpus, cluster):
    """``facefuse detect`` (the local engine) on the corpus: the records to match."""
    out = corpus.parent / "single"
    assert main(["detect", str(corpus), "--out", str(out), "--jsonl", "--quiet", *THRESHOLDS]) == 1
    return records(out / "records.jsonl")


def test_detect_records_equal_the_single_process_ones(corpus, cluster, single, capsys):
    out = corpus.parent / "ray-detect"
    assert main(["detect", str(corpus), "--out", str(out), "--engine", "ray", "--quiet", *THRESHOLDS]) == 1
    assert ray_records(out) == single
    assert sum(len(r.get("faces", [])) for r in single.values()) > 0
    errors = {Path(p).name: r["error"] for p, r in single.items() if "error" in r}
    assert set(errors) == {"cut.jpg", "empty.jpg", "notes.jpg", "tiny.png"} and "truncated" in errors["cut.jpg"]
    rotated = single[str(corpus / "sub" / "rotated.jpg")]
    assert (rotated["width"], rotated["height"]) == (96, 64)  # stored 64x96, upright 96x64
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["written"], summary["failures"], summary["duplicates"]) == (10, 10, 4, 0)
    assert summary["faces"] == sum(len(r.get("faces", [])) for r in single.values())
    assert "10 of 10 images written" in capsys.readouterr().out
    # A rerun finds everything done and writes nothing more.
    assert main(["detect", str(corpus), "--out", str(out), "--engine", "ray", "--quiet", *THRESHOLDS]) == 1
    assert json.loads((out / "summary.json").read_text())["done_now"] == 0 and ray_records(out) == single


def test_embed_equals_the_single_process_embeddings(corpus, cluster):
    local, out = corpus.parent / "single-embed", corpus.parent / "ray-embed"
    some = [str(corpus / name) for name in ("astronaut.png", "chelsea.jpg", "sub/rotated.jpg", "empty.jpg")]
    assert main(["embed", *some, "--out", str(local), "--quiet", *THRESHOLDS]) == 1
    assert main(["embed", *some, "--out", str(out), "--engine", "ray", "--jsonl", "--quiet", *THRESHOLDS]) == 1
    rows = {}
    for f in (out / "jsonl").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            rows[row["path"]] = row
    expected = np.load(local / "embeddings.npy")
    index = [json.loads(line) for line in (local / "faces.jsonl").read_text().splitlines()]
    assert len(index) > 0
    got = np.array([rows[face["path"]]["embeddings"][face["face"]] for face in index], np.float32)
    np.testing.assert_array_equal(got, expected)
    assert sum(e is not None for r in rows.values() for e in r.get("embeddings", [])) == len(index)


def test_a_dataset_of_image_bytes(corpus, cluster, single):
    import ray

    paths = sorted(str(p) for p in corpus.rglob("*.*"))
    dataset = ray.data.read_binary_files(paths, include_paths=True)
    # One image per batch: records equal to the single-process ones for the images it ran alone.
    rows = ray_pipeline.ray_detect(dataset, **{**SETTINGS, "batch": 1}).take_all()
    assert len(rows) == len(paths)
    by_name = {Path(r["path"]).name: ray_pipeline.record_of(r) for r in rows}
    for path, record in single.items():
        got, record = by_name[Path(path).name], dict(record)
        for r in (got, record):  # a dataset of bytes names an image by its full path
            r.pop("time_ms", None), r.pop("batch", None), r.pop("name", None)
        if Path(path).name not in ("n0.png", "n1.png", "n2.png", "chelsea.jpg", "rotated.jpg"):  # batched in pairs
            assert got == record


DRIVER = textwrap.dedent("""
    import sys, time
    import ray
    from fused.apps import ray_pipeline

    class Slow(ray_pipeline.DetectBatches):  # a batch per half second: the driver is killed part-way
        def __call__(self, batch):
            time.sleep(0.5)
            return super().__call__(batch)

    ray.init(address=sys.argv[1], log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_pipeline.run_corpus([sys.argv[4]], sys.argv[2], ray_pipeline.Settings(**eval(sys.argv[3])),
                            rows_per_file=1, worker=Slow)
""")


def _whole_parquet_files(folder):
    """The Parquet files in ``folder`` that can be read whole (footer written), by name."""
    import pyarrow.parquet as pq

    whole = []
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        try:
            pq.read_metadata(path)
        except Exception:  # pyarrow.ArrowInvalid, or the file vanished or grew while being read
            continue
        whole.append(path)
    return whole


def test_resume_after_the_driver_is_killed_and_a_worker_killed_mid_batch(corpus, cluster, single, tmp_path):
    """The driver (a subprocess) is killed part-way and a written file cut short; the rerun, whose
    first actor dies mid-batch (Ray restarts it and retries the batch), writes each image once,
    with the single-process records. (One test for both faults: each Ray run costs an actor start.)"""
    out = tmp_path / "out"
    parquet = out / "parquet"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, cluster, str(out), repr(SETTINGS), str(corpus)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(complete := _whole_parquet_files(parquet)) < 2:  # a file that exists may still be being written
        assert driver.poll() is None, "the driver ended before it was killed"
        assert time.monotonic() < deadline, "no output within two minutes"
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert 2 <= len(list(parquet.glob("*.parquet"))) <= 4  # 8 planned batches in 4 blocks, a file each
    cut = complete[0]
    cut.write_bytes(cut.read_bytes()[:100])  # as if killed while writing it: complete[1] stays whole
    marker = tmp_path / "killed"

    class KillOnce(ray_pipeline.DetectBatches):
        """Dies (SIGKILL) once, after detecting its first batch and before returning it."""

        def __call__(self, batch):
            table = super().__call__(batch)
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return table

    summary = ray_pipeline.run_corpus([corpus], out, ray_pipeline.Settings(**SETTINGS), rows_per_file=1,
                                      worker=KillOnce, say=lambda line: None)
    assert marker.exists() and int(marker.read_text()) != os.getpid()
    assert 0 < summary["written_before"] < 10 and summary["done_now"] == 10 - summary["written_before"]
    assert (summary["written"], summary["duplicates"]) == (10, 0)
    assert (parquet / (cut.name + ".incomplete")).exists()
    assert ray_records(out) == single


def test_without_ray_the_engine_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["detect", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--engine", "ray"]) == 2
    assert 'pip install "facefuse[ray]"' in capsys.readouterr().err


def test_one_cuda_graph_per_input_shape(monkeypatch):
    """GraphedDetector (the actors' detector on a GPU) on the CPU, with a stand-in for
    fused.cuda_graph that counts captures: one per shape, the least recently used dropped."""
    import torch

    import fused
    import reference

    captures = []

    def cuda_graph(model, x):
        captures.append(tuple(x.shape))
        return model

    monkeypatch.setattr(fused, "cuda_graph", cuda_graph)
    detector = fused.fuse(reference.retinaface("mobile0.25", seed=0).eval())
    graphed = ray_pipeline.GraphedDetector(detector, max_graphs=2)
    images = {size: np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
              for size in [(32, 32), (32, 64), (64, 32)]}
    with fused.enabled(False):
        for size in [(32, 32), (32, 64), (32, 32), (64, 32), (32, 32), (32, 64)]:
            got = reference.detect(graphed, [images[size]], conf=0.5, channel_order="rgb")[0]
            want = reference.detect(detector, [images[size]], conf=0.5, channel_order="rgb")[0]
            assert torch.equal(got.boxes, want.boxes) and torch.equal(got.scores, want.scores)
    # (32, 64) was dropped when (64, 32) came (two kept; (32, 32) was used since), so it is captured again.
    assert [c[2:] for c in captures] == [(32, 32), (32, 64), (64, 32), (32, 64)]


@pytest.mark.parametrize("extra, message", [
    (["--address", "127.0.0.1:6379"], "--address is for --engine ray"),
    (["--engine", "ray", "--draw"], "--draw is not available with --engine ray"),
    (["--engine", "ray", "--compare"], "--compare is not available with --engine ray"),
])
def test_usage_errors(tmp_path, capsys, extra, message):
    if "--engine" in extra:
        pytest.importorskip("ray.data")
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    assert main(["detect", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_jsonl_file_cut_short_counts_as_not_written(tmp_path):
    """Resuming reads the rows written; a file a killed run left mid-line is set aside (its images
    are done again) rather than read in part or left to break readers."""
    pytest.importorskip("pyarrow")
    folder = tmp_path / "jsonl"
    folder.mkdir()
    whole = [{"name": "a.png", "path": "a.png", "width": 64, "height": 64, "faces": []},
             {"name": "b.png", "path": "b.png", "error": "cannot read the image"}]
    (folder / "1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in whole))
    (folder / "2.jsonl").write_text(json.dumps({"name": "c.png", "path": "c.png", "faces": []}) + '\n{"name": "d.pn')
    rows = ray_pipeline.read_rows(tmp_path, jsonl=True)
    assert rows == [{"name": "a.png", "error": None, "faces": 0},
                    {"name": "b.png", "error": "cannot read the image", "faces": 0}]
    assert sorted(p.name for p in folder.iterdir()) == ["1.jsonl", "2.jsonl.incomplete"]


def test_a_bad_weight_file_is_a_usage_error_before_ray_starts(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray.data")
    import ray

    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    (tmp_path / "w.pth").write_bytes(b"not a weight file")
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    code = main(["detect", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--engine", "ray",
                 "--weights", str(tmp_path / "w.pth")])
    assert code == 2 and "detector weights" in capsys.readouterr().err
