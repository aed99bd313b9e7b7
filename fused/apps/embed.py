"""``facefuse embed PATH... --out DIR``: detect the faces, embed each with ArcFace, compare them all.

Writes into DIR: ``faces.jsonl`` (one line per face as it is embedded: its row, image, box, score
and landmarks), ``embeddings.npy`` (``[faces, 512]`` float32, not normalised, rows as in
``faces.jsonl``), ``similarity.csv`` (the cosine similarity of every pair of faces, labelled
``<image>#<face>``) and ``summary.json``. Faces are the detected boxes cropped from the full image
(``reference.crop_faces``; not aligned to the landmarks), resized as ArcFace expects
(``reference.arcface_input``). Unreadable files are reported and skipped; on an interrupt the
faces embedded so far are still written. Exit status as ``facefuse detect``.
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

from . import ray_pipeline, run


def add_embed(sub):
    p = sub.add_parser(
        "embed", help="embed the detected faces with ArcFace: embeddings, cosine-similarity matrix, timing",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    run.add_common(p)
    ray_pipeline.add_options(p)
    p.add_argument("--identity-weights", metavar="FILE",
                   help="ArcFace's weight file (default: the released one with --pretrained, else random)")
    return p


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


def write_similarity(path: Path, labels: list[str], embeddings: np.ndarray) -> None:
    similarity = reference.cosine_similarity(torch.from_numpy(embeddings)).numpy() if len(labels) else np.zeros((0, 0))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["face", *labels])
        for label, row in zip(labels, similarity):
            writer.writerow([label, *(f"{v:.5f}" for v in row)])


def run_embed(args) -> int:
    if (code := ray_pipeline.dispatch(args, "embed")) is not None:  # --engine ray
        return code
    begun = run.start(args, "embed")
    device, use_fused, compare, out, items, progress = (begun.device, begun.use_fused, begun.compare, begun.out,
                                                        begun.items, begun.progress)
    detector, say = begun.detector, progress.say
    identity = run.build("identity network", "", args, args.identity_weights, device, say)
    out.mkdir(parents=True, exist_ok=True)
    index = open(out / "faces.jsonl", "w")
    labels, rows, skipped = [], [], []
    embedding = run.Timings("embedding", use_fused, unit="face")
    started = time.perf_counter()

    def on_image(item, full, scaled, detections, record):
        if "error" in record:
            skipped.append(record)
            say(f"skipped {record['path']}: {record['error']}")
            return
        kept, crops = face_crops(full, record["faces"])
        if not crops:
            return

        def run_embedding():
            return reference.embed(identity, crops, channel_order="rgb")

        with fused.enabled(use_fused):
            vectors, seconds = run.timed(run_embedding, device)
        if embedding.compared is None and compare:
            embedding.compare(run_embedding, len(crops), device)
        embedding.add(seconds[0], len(crops))
        for i, vector in zip(kept, vectors.float().cpu().numpy()):
            label = f"{item.name}#{i}"
            index.write(json.dumps({"row": len(rows), "label": label, "path": record["path"], "face": i,
                                    **record["faces"][i]}) + "\n")
            index.flush()
            labels.append(label)
            rows.append(vector)

    timings, finished = None, False
    try:
        timings = run.detect_all(items, detector, args, device, use_fused, compare, progress, on_image)
        finished = True
    finally:
        index.close()
        progress.close()
        embeddings = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 512), np.float32)
        np.save(out / "embeddings.npy", embeddings)
        write_similarity(out / "similarity.csv", labels, embeddings)
        summary = {
            "command": "embed", "model": args.model, "device": device.type, "fused": use_fused,
            "weights": args.weights or ("released" if args.pretrained else f"random (seed {args.seed})"),
            "identity_weights": args.identity_weights or ("released" if args.pretrained else f"random (seed {args.seed})"),
            "conf": args.conf, "iou": args.iou, "batch": args.batch, "max_size": args.max_size,
            "images": len(items), "skipped": skipped, "faces": len(rows), "finished": finished,
            "seconds": round(time.perf_counter() - started, 3),
            "timing": {"detection": timings.summary() if timings else None, "embedding": embedding.summary()},
        }
        summary_path = run.write_summary(out, summary)
    print(f"{len(items) - len(skipped)} images, {len(rows)} faces embedded, {len(skipped)} skipped")
    print(f"embeddings {out / 'embeddings.npy'} {tuple(embeddings.shape)}, index {out / 'faces.jsonl'}, "
          f"cosine similarities {out / 'similarity.csv'}")
    for line in timings.lines(device) + embedding.lines(device):
        print(line)
    print(f"summary: {summary_path}")
    if skipped:
        print(f"{len(skipped)} file{'s' if len(skipped) != 1 else ''} skipped (listed in the summary)", file=sys.stderr)
    return 1 if skipped else 0
