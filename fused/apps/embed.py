"""``facefuse embed PATH... --out DIR``: detect the faces, embed each with ArcFace, find each face's
nearest faces.

Writes into DIR: the per-image records as ``facefuse detect`` does (``records/`` or, with
``--jsonl``, ``records.jsonl``), ``faces.jsonl`` (one line per face as it is embedded: its row,
label, image, box, score and landmarks), ``embeddings.npy`` (``[faces, 512]`` float32, not
normalised, rows as in ``faces.jsonl``), ``similarity.csv`` (for each face its ``--top-k`` most
similar other faces by cosine similarity, :func:`write_similarity`) and ``summary.json``. Faces
are the detected boxes cropped from the full image (``reference.crop_faces``; not aligned to the
landmarks), resized as ArcFace expects (``reference.arcface_input``). Unreadable files are
reported and skipped; on an interrupt the faces embedded so far are still written, and a rerun
with the same options resumes. Exit status as ``facefuse detect``.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fused
import reference

from . import outputs, run

#: Faces compared at once when finding neighbours: memory grows with this times the face count.
CHUNK = 1024


def face_crops(full, faces: list[dict]):
    """The crops of ``faces`` that have an area inside the image, with their indices."""
    kept, crops = [], []
    for i, face in enumerate(faces):
        try:
            crops += reference.crop_faces(full, torch.tensor([face["box"]]), channel_order="rgb")
            kept.append(i)
        except ValueError:  # a box with no area inside the image
            pass
    return kept, crops


def write_similarity(path: Path, labels: list[str], embeddings: np.ndarray, top_k: int) -> None:
    """``face,rank,neighbour,similarity``: for each face (in row order) its ``top_k`` most similar
    other faces, rank 1 first, by cosine similarity (5 decimals). The file grows with faces x top_k,
    not faces squared; the whole matrix is ``embeddings.npy`` normalised, times its transpose."""
    vectors = torch.nn.functional.normalize(torch.from_numpy(embeddings).float(), dim=1)
    k = min(top_k, max(len(labels) - 1, 0))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["face", "rank", "neighbour", "similarity"])
        for first in range(0, len(labels), CHUNK):
            block = vectors[first:first + CHUNK] @ vectors.T
            block[torch.arange(len(block)), torch.arange(first, first + len(block))] = -float("inf")  # not itself
            values, indices = block.topk(k, dim=1) if k else (block[:, :0], block[:, :0].long())
            for row, (vals, idx) in enumerate(zip(values.tolist(), indices.tolist())):
                for rank, (v, j) in enumerate(zip(vals, idx), 1):
                    writer.writerow([labels[first + row], rank, labels[j], f"{v:.5f}"])


def _earlier_faces(out: Path, records) -> tuple[list[str], list[np.ndarray], list[dict]]:
    """The faces of the images an earlier run finished (labels, vectors, lines); an image whose
    faces were not all saved in ``embeddings.npy`` is dropped from ``records.done`` and redone."""
    try:
        lines = [json.loads(line) for line in (out / "faces.jsonl").read_text(encoding="utf-8").splitlines()]
        saved = np.load(out / "embeddings.npy")
    except (OSError, ValueError):
        lines, saved = [], np.zeros((0, 512), np.float32)
    by_image: dict[str, list[dict]] = {}
    for line in lines:
        if isinstance(line, dict) and line.get("name") in records.done:
            by_image.setdefault(line["name"], []).append(line)
    labels, rows, kept = [], [], []
    for name in list(records.done):
        faces = by_image.get(name, [])
        if any(f["row"] >= len(saved) for f in faces) or len(faces) != records.done[name].get("embedded", 0):
            del records.done[name]  # interrupted between its faces and embeddings.npy: embed it again
            continue
        for f in faces:
            kept.append({**f, "row": len(rows)})
            labels.append(f["label"])
            rows.append(saved[f["row"]])
    return labels, rows, kept


def run_embed(args) -> int:
    begun = run.start(args, "embed")
    device, use_fused, compare, out, items, progress = (begun.device, begun.use_fused, begun.compare, begun.out,
                                                        begun.items, begun.progress)
    detector, say, records = begun.detector, progress.say, begun.records
    identity = run.build("identity network", "", args, args.identity_weights, device, say)
    labels, rows, earlier = _earlier_faces(out, records) if records.done else ([], [], [])
    with open(out / "faces.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in earlier)
    index = open(out / "faces.jsonl", "a", encoding="utf-8")
    skipped = []
    embedding = run.Timings("embedding", use_fused, unit="face")
    started = time.perf_counter()

    def on_image(item, full, scaled, detections, record):
        if "error" not in record:
            kept, crops = face_crops(full, record["faces"])
            if crops:
                def run_embedding():
                    return reference.embed(identity, crops, channel_order="rgb")

                with fused.enabled(use_fused):
                    vectors, seconds = run.timed(run_embedding, device)
                if embedding.compared is None and compare:
                    embedding.compare(run_embedding, len(crops), device)
                embedding.add(seconds[0], len(crops))
                for i, vector in zip(kept, vectors.float().cpu().numpy()):
                    label = f"{outputs.display(item.name)}#{i}"
                    index.write(json.dumps({"row": len(rows), "label": label, "name": item.name, "path": record["path"],
                                            "face": i, **record["faces"][i]}) + "\n")
                    labels.append(label)
                    rows.append(vector)
                index.flush()
            record = {**record, "embedded": len(crops)}
        try:
            records.write(record, item.name)
        except OSError as exc:  # this image's record only: the batch goes on
            record = {"path": record["path"], "error": f"could not write its record ({type(exc).__name__}: {exc})"}
        if "error" in record:
            skipped.append(record)
            say(f"skipped {record['path']}: {record['error']}")

    timings, finished = run.Timings("detection", use_fused), False
    try:
        run.detect_all(items, detector, args, device, use_fused, compare, progress, on_image, timings,
                       done=records.done)
        finished = True
    finally:
        index.close()
        records.close()
        progress.close()
        embeddings = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 512), np.float32)
        np.save(out / "embeddings.npy", embeddings)
        write_similarity(out / "similarity.csv", labels, embeddings, args.top_k)
        summary = {
            "command": "embed", "model": args.model, "device": device.type, "fused": use_fused,
            "threads": begun.threads, **run.result_options(args, "embed"), "batch": args.batch, "top_k": args.top_k,
            "images": len(items), "resumed": begun.resumed, "skipped": skipped, "faces": len(rows),
            "finished": finished, "seconds": round(time.perf_counter() - started, 3),
            "timing": {"detection": timings.summary(), "embedding": embedding.summary()},
        }
        summary_path = run.write_summary(out, summary)
    print(f"{len(items) - len(skipped)} images, {len(rows)} faces embedded, {len(skipped)} skipped"
          + (f" ({begun.resumed} images from the earlier run)" if begun.resumed else ""))
    print(f"embeddings {out / 'embeddings.npy'} {tuple(embeddings.shape)}, index {out / 'faces.jsonl'}, "
          f"nearest faces {out / 'similarity.csv'}, records in {records.where()}")
    for line in timings.lines(device) + embedding.lines(device):
        print(line)
    print(f"summary: {summary_path}")
    if skipped:
        print(f"{len(skipped)} file{'s' if len(skipped) != 1 else ''} skipped (listed in the summary)", file=sys.stderr)
    return 1 if skipped else 0
