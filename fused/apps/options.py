"""The options of ``facefuse detect`` and ``facefuse embed``, without torch: the command line
builds these parsers and checks the values argparse cannot before it loads torch and the models."""

from __future__ import annotations

import argparse
import os

from .files import MIN_SIDE

#: ``--model`` → the RetinaFace backbone.
DETECTORS = {"retinaface": "mobile0.25", "retinaface-resnet50": "resnet50"}
#: Neighbours per face in ``similarity.csv`` by default (``--top-k``).
TOP_K = 10


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= 1:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def at_least(minimum: int, what: str | None = None):
    """An argparse type: an integer >= ``minimum`` (a ``what`` integer), with a clear message otherwise."""
    expected = f"a {what} integer" if what else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def add_common(p: argparse.ArgumentParser) -> None:
    """The options both commands take."""
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders (searched recursively)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the outputs (required; created if needed). A folder holding an earlier run "
                        "with the same options is resumed; other options are refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the outputs of an earlier run in --out (only the files this command writes) and "
                        "start over")
    p.add_argument("--model", choices=list(DETECTORS), default="retinaface",
                   help="detector: retinaface = mobile0.25 (default), or retinaface-resnet50")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--weights", metavar="FILE", help="the detector's weight file (.pth, or an ONNX export: .onnx)")
    which.add_argument("--pretrained", action="store_true",
                       help="the released weights, downloaded once into the cache ($FACEFUSE_WEIGHTS_DIR, default "
                            "torch hub's checkpoints folder; $FACEFUSE_WEIGHTS_URL names a mirror). A failed "
                            "download exits with status 3")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                   help="run the fused Triton kernels (default: on a GPU yes; on a CPU no, since there they run in "
                        "Triton's interpreter: correct but slow)")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=None,
                   help="also time the first batch the other way (fused vs unfused) and print both (default: on a GPU)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=at_least(1, "positive"), default=None, metavar="N",
                   help="torch threads on a CPU (default: the idle cores, read once at the start: the cores "
                        "less the 1-minute load average, at least 1)")
    p.add_argument("--conf", type=fraction, default=0.8, help="score threshold in [0, 1] (default: 0.8)")
    p.add_argument("--iou", type=fraction, default=0.4, help="NMS overlap threshold in [0, 1] (default: 0.4)")
    p.add_argument("--batch", type=at_least(1, "positive"), default=8, help="images of one size per batch (default: 8)")
    p.add_argument("--max-size", type=at_least(MIN_SIDE), default=None, metavar="N",
                   help="shrink images whose longer side exceeds N pixels before detection (boxes are given in "
                        "the original pixels); default: full size")
    p.add_argument("--jsonl", action="store_true", help="write the per-image records to records.jsonl (default: one "
                                                        "JSON file per image under records/)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights used without --weights/--pretrained")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    add_engine(p)


def add_engine(p: argparse.ArgumentParser) -> None:
    """``--engine`` and ``--address`` of ``facefuse detect`` and ``facefuse embed``."""
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: a pool of Ray actors, one GPU each (needs "
                        "pip install \"facefuse[ray]\"; writes Parquet, or JSONL with --jsonl; a rerun resumes)")
    p.add_argument("--address", metavar="ADDRESS", default=None,
                   help="with --engine ray: the Ray cluster to join (host:port of `ray start --head`, or auto); "
                        "default: a local cluster on this machine")


def add_detect_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--draw", action="store_true", help="also write annotated copies under DIR/drawn/")


def add_embed_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--identity-weights", metavar="FILE",
                   help="ArcFace's weight file (default: the released one with --pretrained, else random)")
    p.add_argument("--top-k", type=at_least(1, "positive"), default=TOP_K, metavar="K",
                   help=f"neighbours per face written to similarity.csv, most similar first (default: {TOP_K})")


def check_paths(args) -> None:
    """A PATH that does not exist is a usage error (exit 2)."""
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        args.parser.error("no such file or folder: " + ", ".join(missing))


DETECT_DESCRIPTION = ("Detect faces in images and folders: one JSON record per image (boxes, scores, five landmarks "
                      "in the image's pixels), annotated copies with --draw, and summary.json with the options, "
                      "counts and timings. Images of one size run as one batch. See docs/cli.md.")
EMBED_DESCRIPTION = ("Detect the faces, embed each with ArcFace, and find each face's nearest faces by cosine "
                     "similarity: faces.jsonl, embeddings.npy, similarity.csv (top-k neighbours per face), the "
                     "per-image records as detect writes them, and summary.json. See docs/cli.md.")
