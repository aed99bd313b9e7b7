"""``facefuse detect/embed --engine ray``: the fused detector (and ArcFace) over a photo collection
on a Ray cluster, with Ray Data (``pip install "facefuse[ray]"``).

The records are those of the single-process commands, made by the same functions
(:func:`fused.apps.files.read_size` and :func:`~fused.apps.files.load` for decoding, EXIF
orientation included; :func:`fused.apps.run.detect_all` for batching, detection and the record),
in a pool of Ray actors, each holding one fused model (built, loaded and fused once per actor; on a
GPU, one CUDA graph per input shape). Output, written as the work goes, one row per image::

    OUT/parquet/*.parquet   (default) or OUT/jsonl/*.jsonl (``jsonl=True``, ``--jsonl``)
    OUT/summary.json        images, faces, failures, images/s

Batching: images of the **same size** run as one batch, planned on the driver exactly as
``facefuse detect`` plans them (:func:`fused.apps.files.batches`: grouped by input size in order of
first appearance, ``batch`` at most per group). No size buckets: resizing or padding into buckets
changes the pixels the model sees near the borders, so the faces found would differ from the
single-process records; and a float32 batch of other images sums in another order, so even the
batch's composition is kept. ``max_size`` (``--max-size``) is the knob that makes sizes repeat.

Resuming: a rerun into the same folder skips the images whose rows are already written (keyed by
their unique output name); a file left incomplete by a killed run is renamed ``*.incomplete`` and
its images are done again, so nothing is lost or written twice. A bad image (unreadable, truncated,
empty, too small) is a row with its ``error``, and the job goes on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import fused

from . import files, run

INSTALL = 'Ray Data is not installed: pip install "facefuse[ray]" (or pip install "ray[data]")'
#: Embedding width of ArcFace.
EMBEDDING_SIZE = 512


def require_ray():
    """The ``ray`` module with ``ray.data``, or ModuleNotFoundError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ModuleNotFoundError(INSTALL) from exc
    return ray


@dataclass
class Settings:
    """What every actor needs to build its models and run them: the ``facefuse detect`` options."""

    model: str = "retinaface"
    weights: str | None = None
    pretrained: bool = False
    seed: int = 0
    #: Also embed each face with ArcFace (``facefuse embed``).
    embed: bool = False
    identity_weights: str | None = None
    device: str = "auto"
    #: ``None``: fused on a GPU, unfused on a CPU (as the CLI).
    fused: bool | None = None
    conf: float = 0.8
    iou: float = 0.4
    batch: int = 8
    max_size: int | None = None
    #: torch threads per actor (and CPUs reserved per actor).
    threads: int = 1
    #: CUDA graphs kept per actor (one per input shape, least recently used dropped).
    max_graphs: int = 8


def schema(embed: bool):
    """The Parquet schema of one row per image; faces as lists of fixed-size lists."""
    import pyarrow as pa

    fields = [
        ("name", pa.string()), ("path", pa.string()), ("error", pa.string()),
        ("width", pa.int32()), ("height", pa.int32()), ("input_size", pa.list_(pa.int32(), 2)),
        ("boxes", pa.list_(pa.list_(pa.float64(), 4))), ("scores", pa.list_(pa.float64())),
        ("landmarks", pa.list_(pa.list_(pa.float64(), 10))),
        ("time_ms", pa.float64()), ("batch", pa.int32()), ("fused", pa.bool_()),
    ]
    if embed:
        fields.append(("embeddings", pa.list_(pa.list_(pa.float32(), EMBEDDING_SIZE))))
    return pa.schema(fields)


def row_of(name: str, record: dict, embeddings=None) -> dict:
    """A single-process record (``run.detect_all``'s) as a row of :func:`schema`. ``embeddings``:
    one ``[512]`` array per face, ``None`` for a face whose box has no area inside the image."""
    row = dict.fromkeys(schema(embeddings is not None).names)
    row.update(name=name, path=record["path"], error=record.get("error"))
    if "error" not in record:
        faces = record["faces"]
        row.update(width=record["width"], height=record["height"], input_size=record["input_size"],
                   boxes=[f["box"] for f in faces], scores=[f["score"] for f in faces],
                   landmarks=[[v for point in f["landmarks"] for v in point] for f in faces],
                   time_ms=record["time_ms"], batch=record["batch"], fused=record["fused"])
        if embeddings is not None:
            row["embeddings"] = [None if e is None else np.asarray(e, np.float32) for e in embeddings]
    return row


def record_of(row: dict) -> dict:
    """The single-process record (as ``facefuse detect`` writes it) of a row of :func:`schema`."""
    if row.get("error") is not None:
        return {"name": row["name"], "path": row["path"], "error": row["error"]}
    faces = [{"box": list(box), "score": score, "landmarks": [list(lm[i:i + 2]) for i in range(0, 10, 2)]}
             for box, score, lm in zip(row["boxes"], row["scores"], row["landmarks"])]
    return {"name": row["name"], "path": row["path"], "width": row["width"], "height": row["height"], "input_size": list(row["input_size"]),
            "faces": faces, "time_ms": row["time_ms"], "batch": row["batch"], "fused": row["fused"]}


class _Refuse:
    """``args.parser`` for :func:`fused.apps.run.build` inside an actor: errors raise."""

    @staticmethod
    def error(message: str):
        raise ValueError(message)


class _Silent:
    """The progress object :func:`fused.apps.run.detect_all` updates: Ray shows the progress."""

    def update(self, done: int = 0, skipped: int = 0) -> None:
        pass

    @staticmethod
    def say(line: str) -> None:
        pass


class GraphedDetector(torch.nn.Module):
    """``detector`` replaying a CUDA graph per input shape (:func:`fused.cuda_graph`), keeping the
    ``max_graphs`` shapes used last; ``reference.detect`` takes it as it takes the detector."""

    def __init__(self, detector: torch.nn.Module, max_graphs: int = 8):
        super().__init__()
        self.detector = detector
        self.phase = detector.phase
        self.max_graphs = max_graphs
        self.graphs = OrderedDict()
        self.train(detector.training)

    def forward(self, x: torch.Tensor):
        key = (tuple(x.shape), x.dtype, fused.is_enabled())
        graph = self.graphs.pop(key, None)
        if graph is None:
            while len(self.graphs) >= self.max_graphs:
                self.graphs.popitem(last=False)  # the least recently used shape
            graph = fused.cuda_graph(self.detector, x)
        self.graphs[key] = graph
        return graph(x)


class DetectBatches:
    """The callable class of ``map_batches``: one per actor, holding the fused models.

    Takes a batch (a ``pyarrow.Table``) of planned rows (``names``, ``paths``, ``shown``,
    ``errors``: one detection batch each, from :func:`plan`) or of image bytes (``bytes``,
    ``path``); returns one row per image (:func:`schema`)."""

    def __init__(self, settings: Settings):
        from ..measure import models

        torch.set_num_threads(settings.threads)
        self.settings = settings
        self.device = models.resolve_device(settings.device)
        self.use_fused = self.device.type == "cuda" if settings.fused is None else settings.fused
        self.args = argparse.Namespace(seed=settings.seed, pretrained=settings.pretrained, quiet=True,
                                       parser=_Refuse(), conf=settings.conf, iou=settings.iou, batch=settings.batch)
        self.detector = run.build("detector", run.DETECTORS[settings.model], self.args, settings.weights,
                                  self.device, _Silent.say)
        if self.device.type == "cuda":
            self.detector = GraphedDetector(self.detector, settings.max_graphs)
        self.identity = None
        if settings.embed:
            self.identity = run.build("identity network", "", self.args, settings.identity_weights, self.device,
                                      _Silent.say)
        self.spool = Path(tempfile.mkdtemp(prefix="facefuse-ray-"))

    def items(self, rows: list[dict]) -> tuple[list, dict]:
        """``(items, {id(item): (name, shown path)})`` with their sizes read (or their errors)."""
        items, names = [], {}
        for i, row in enumerate(rows):
            if "bytes" in row:  # a dataset of image bytes: spooled to a file, which files.load opens
                spooled = self.spool / str(i)
                spooled.write_bytes(row["bytes"] or b"")
                entries = [(row["path"], row["path"], spooled, None)]
            else:
                entries = zip(row["names"], row["shown"], row["paths"], row["errors"])
            for name, shown, path, error in entries:
                item = files.Item(Path(path), name, error=error)
                if error is None:
                    files.read_size(item, self.settings.max_size)
                items.append(item)
                names[id(item)] = (name, shown)
        return items, names

    def __call__(self, batch):
        import pyarrow as pa

        rows = []
        items, names = self.items(batch.to_pylist())

        def on_image(item, full, scaled, detections, record):
            name, shown = names[id(item)]
            record["path"] = shown
            if "error" in record and item.path.parent == self.spool:  # name the image, not its spooled copy
                record["error"] = record["error"].replace(str(item.path), shown)
            embeddings = self.embed(full, record) if self.identity is not None else None
            rows.append(row_of(name, record, embeddings))

        run.detect_all(items, self.detector, self.args, self.device, self.use_fused, False, _Silent(), on_image,
                       run.Timings("detection", self.use_fused))
        for path in self.spool.iterdir():
            path.unlink()
        return pa.Table.from_pylist(rows, schema=schema(self.identity is not None))

    def embed(self, full, record: dict):
        """One embedding per face (``None`` for a box with no area in the image), the crops of one
        image in one batch as ``facefuse embed`` runs them."""
        import reference

        from .embed import face_crops

        if "error" in record:
            return []
        kept, crops = face_crops(full, record["faces"])
        out = [None] * len(record["faces"])
        if crops:
            with fused.enabled(self.use_fused):
                vectors = reference.embed(self.identity, crops, channel_order="rgb").float().cpu().numpy()
            for i, vector in zip(kept, vectors):
                out[i] = vector
        return out


def plan(items: list, batch: int, max_size: int | None, threads: int = 16) -> list[dict]:
    """Rows of detection batches, as ``facefuse detect`` forms them: the sizes read from the files'
    headers (``threads`` at once), grouped by :func:`fused.apps.files.batches`; one row per failed
    item (missing, unreadable header, too small) carrying its error."""
    todo = [item for item in items if item.error is None]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda item: files.read_size(item, max_size), todo))

    def row(group, errors):
        return {"names": [i.name for i in group], "paths": [str(Path(i.path).resolve()) for i in group],
                "shown": [files.relative(i.path) for i in group], "errors": errors}

    rows = [row([item], [item.error]) for item in items if item.error is not None]
    rows += [row(group, [None] * len(group)) for group in files.batches(items, batch)]
    return rows


# ---------------------------------------------------------------------------------------- output


def output_folder(out, jsonl: bool) -> Path:
    return Path(out) / ("jsonl" if jsonl else "parquet")


def read_rows(out, jsonl: bool) -> list[dict]:
    """``{name, error, faces}`` (faces: how many) of every row written so far under ``out``. A file
    that cannot be read whole (a run killed while writing it) is renamed ``*.incomplete``: its
    images count as not done."""
    import pyarrow.parquet as pq

    folder = output_folder(out, jsonl)
    rows = []
    for path in sorted(folder.glob("*.jsonl" if jsonl else "*.parquet")) if folder.is_dir() else []:
        try:
            if jsonl:
                text = path.read_text()
                if text and not text.endswith("\n"):
                    raise ValueError("the last line is cut short")
                found = [json.loads(line) for line in text.splitlines()]
                found = [(r["name"], r.get("error"), r.get("faces") or []) for r in found]
            else:
                table = pq.read_table(path, columns=["name", "error", "scores"]).to_pydict()
                found = zip(table["name"], table["error"], table["scores"])
                found = [(name, error, scores or []) for name, error, scores in found]
        except Exception:  # cut short: pyarrow.ArrowInvalid (no footer), json.JSONDecodeError, ValueError
            path.rename(path.with_name(path.name + ".incomplete"))
            continue
        rows += [{"name": name, "error": error, "faces": len(faces)} for name, error, faces in found]
    return rows


def jsonl_sink(path, min_rows_per_file: int | None):
    """A Ray datasink writing each row as its single-process JSON record (plus ``name``, and
    ``embeddings`` when embedding), one line each."""
    from ray.data.datasource import BlockBasedFileDatasink

    class JsonlDatasink(BlockBasedFileDatasink):
        def __init__(self):
            super().__init__(str(path), file_format="jsonl", min_rows_per_file=min_rows_per_file)

        def write_block_to_file(self, block, file):
            lines = []
            for row in block.to_arrow().to_pylist():
                record = record_of(row)
                if row.get("embeddings") is not None and "error" not in record:
                    record["embeddings"] = [None if e is None else [float(v) for v in e] for e in row["embeddings"]]
                lines.append(json.dumps(record) + "\n")
            file.write("".join(lines).encode())

    return JsonlDatasink()


# ------------------------------------------------------------------------------------------- API


@dataclass
class Resources:
    """Per-actor resources and the size of the actor pool."""

    num_gpus: float
    num_cpus: float
    concurrency: int


def resources(ray, settings: Settings, num_gpus=None, concurrency=None) -> Resources:
    """Defaults: on a cluster with GPUs (and ``device`` not ``cpu``), one GPU per actor and one
    actor per GPU; without, one actor per ``threads`` CPUs, keeping one CPU for writing."""
    total = ray.cluster_resources()
    gpus, cpus = int(total.get("GPU", 0)), int(total.get("CPU", 1))
    if num_gpus is None:
        num_gpus = 1 if gpus and settings.device != "cpu" else 0
    if concurrency is None:
        concurrency = max(1, int(gpus // num_gpus)) if num_gpus else max(1, (cpus - 1) // settings.threads)
    return Resources(num_gpus, settings.threads, int(concurrency))


def ray_detect(paths_or_dataset, settings: Settings | None = None, *, num_gpus=None, concurrency=None,
               skip=(), exclude=None, worker=DetectBatches, **options):
    """A lazy ``ray.data.Dataset`` of one row per image (:func:`schema`): the faces (and, with
    ``embed=True``, their embeddings) in ``paths_or_dataset``.

    ``paths_or_dataset``: image files and folders (searched as ``facefuse detect`` does; batches
    planned on the driver, see the module's notes) or a ``ray.data.Dataset`` of image bytes with
    columns ``bytes`` and ``path`` (``ray.data.read_binary_files(..., include_paths=True)``; batched
    by size within each Ray batch). ``settings`` (or its fields as keywords: ``weights``, ``conf``,
    ``batch``, ``embed``, ...) as :class:`Settings`. ``num_gpus`` per actor and ``concurrency``
    (actors): see :func:`resources`. ``skip``: names to leave out (done already). ``worker``: the
    callable class the actors run (a subclass of :class:`DetectBatches`)."""
    ray = require_ray()
    settings = settings or Settings(**options)
    if not ray.is_initialized():
        ray.init()
    pool = resources(ray, settings, num_gpus, concurrency)
    skip = set(skip)
    if isinstance(paths_or_dataset, ray.data.Dataset):
        ds = paths_or_dataset.select_columns(["bytes", "path"])
        if skip:
            ds = ds.filter(lambda row: row["path"] not in skip)
        ray_batch = 4 * settings.batch
    else:
        paths = [paths_or_dataset] if isinstance(paths_or_dataset, (str, os.PathLike)) else list(paths_or_dataset)
        items = [item for item in files.find_images(paths, exclude=exclude) if item.name not in skip]
        rows = plan(items, settings.batch, settings.max_size)
        if not rows:
            raise ValueError("no images to do in " + ", ".join(map(str, paths)))
        blocks = min(len(rows), max(4 * pool.concurrency, math.ceil(len(rows) / 32)))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        ray_batch = 1  # one planned detection batch per call
    return ds.map_batches(
        worker, fn_constructor_args=(settings,), batch_size=ray_batch, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pool.concurrency), num_gpus=pool.num_gpus, num_cpus=pool.num_cpus,
    )  # Ray Data's actor pools restart killed actors and retry their batches (max_restarts=-1)


def write(dataset, out, *, jsonl: bool = False, rows_per_file: int | None = 256) -> None:
    """Write ``dataset`` (from :func:`ray_detect`) under ``out`` as it is computed: Parquet files in
    ``out/parquet/`` (JSONL in ``out/jsonl/``), each of at least ``rows_per_file`` rows (fewer at
    the end; a killed run loses at most the files being written)."""
    folder = output_folder(out, jsonl)
    if jsonl:
        dataset.write_datasink(jsonl_sink(folder, rows_per_file), ray_remote_args={"num_cpus": 0.25})
    else:
        dataset.write_parquet(str(folder), min_rows_per_file=rows_per_file, ray_remote_args={"num_cpus": 0.25})


def run_corpus(paths, out, settings: Settings, *, jsonl: bool = False, overwrite: bool = False, num_gpus=None,
               concurrency=None, rows_per_file: int | None = 256, worker=DetectBatches, say=print) -> dict:
    """Detect (and embed) ``paths`` into ``out``, resuming a previous run there (unless
    ``overwrite``); write and return the summary (images, faces, failures, images per second)."""
    require_ray()
    out = Path(out)
    folder = output_folder(out, jsonl)
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    started = time.perf_counter()
    before = {row["name"] for row in read_rows(out, jsonl)}
    found = files.find_images([str(p) for p in paths], exclude=out)
    todo = [item for item in found if item.name not in before]
    if before:
        say(f"resuming: {len(found) - len(todo)} of {len(found)} images already written in {folder}")
    if todo:
        dataset = ray_detect(paths, settings, num_gpus=num_gpus, concurrency=concurrency, skip=before, exclude=out,
                             worker=worker)
        write(dataset, out, jsonl=jsonl, rows_per_file=rows_per_file)
    seconds = time.perf_counter() - started
    rows = read_rows(out, jsonl)
    names = [row["name"] for row in rows]
    wanted = {item.name for item in found}
    failures = [row for row in rows if row["error"] is not None and row["name"] in wanted]
    summary = {
        "command": "embed" if settings.embed else "detect", "engine": "ray", "settings": asdict(settings),
        "output": str(folder), "images": len(found), "written_before": len(found) - len(todo),
        "done_now": len(todo), "written": len(set(names) & wanted),
        "faces": sum(row["faces"] for row in rows if row["name"] in wanted),
        "failures": len(failures), "failed": [{"name": r["name"], "error": r["error"]} for r in failures],
        "duplicates": len(names) - len(set(names)),
        "seconds": round(seconds, 3), "images_per_second": round(len(todo) / seconds, 3) if seconds > 0 else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    run.write_summary(out, summary)
    return summary


# ------------------------------------------------------------------------------------------- CLI


def dispatch(args, command: str) -> int | None:
    """Run ``command`` with ``--engine ray`` and return its exit status; ``None`` for the local
    engine (``--address`` without ``--engine ray`` is a usage error)."""
    if args.engine == "ray":
        return run_cli(args, command)
    if args.address is not None:
        args.parser.error("--address is for --engine ray (the local engine runs in this process)")
    return None


def run_cli(args, command: str) -> int:
    """``facefuse detect|embed --engine ray``: exit 0, 1 when some images failed, 2 for usage errors."""
    try:
        ray = require_ray()
    except ModuleNotFoundError as exc:
        args.parser.error(f"--engine ray: {exc}")
    for option in ("draw", "compare"):
        if getattr(args, option, None):
            args.parser.error(f"--{option} is not available with --engine ray (use the local engine for it)")
    settings = Settings(model=args.model, weights=args.weights, pretrained=args.pretrained, seed=args.seed,
                        embed=command == "embed", identity_weights=getattr(args, "identity_weights", None),
                        device=args.device, fused=args.fused, conf=args.conf, iou=args.iou, batch=args.batch,
                        max_size=args.max_size, threads=getattr(args, "threads", None) or 1)
    # Bad weight files and failed downloads are usage errors here, before the cluster starts (and
    # the released weights are then in this machine's cache for the actors on it).
    for kind, network, weights in [("detector", run.DETECTORS[args.model], args.weights)] + (
            [("identity network", "", settings.identity_weights)] if settings.embed else []):
        if weights or args.pretrained:
            run.build(kind, network, args, weights, torch.device("cpu"), lambda line: None)
    if not files.find_images(args.paths, exclude=args.out):
        args.parser.error("no images found in " + ", ".join(args.paths))
    owned = not ray.is_initialized()  # else: called in a process already connected (tests, notebooks)
    if owned:
        ray.init(address=args.address, include_dashboard=False, log_to_driver=not args.quiet)
    ray.data.DataContext.get_current().enable_progress_bars = not args.quiet
    try:
        summary = run_corpus(args.paths, args.out, settings, jsonl=args.jsonl,
                             overwrite=getattr(args, "overwrite", False), say=print)
    finally:
        if owned:
            ray.shutdown()
    print(f"{summary['written']} of {summary['images']} images written ({summary['written_before']} before this run), "
          f"{summary['faces']} faces, {summary['failures']} failed; {summary['images_per_second']} images/s "
          f"this run; rows in {summary['output']}")
    print(f"summary: {Path(args.out) / 'summary.json'}")
    return 1 if summary["failures"] else 0
