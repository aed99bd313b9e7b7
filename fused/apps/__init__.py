"""Applications on top of the models: ``facefuse detect`` and ``facefuse embed`` on a user's photos.

    options.py  their options and checks, without torch (the command line parses with them first)
    files.py    finding and reading images (PIL), batching by size, the progress line
    outputs.py  what goes into --out: record and drawn names, drawing, records, resuming a folder
    run.py      the detection loop shared by both commands: models, threads, batches, timings
    detect.py   facefuse detect: one JSON record per image, annotated images
    embed.py    facefuse embed: ArcFace embeddings of the detected faces, their nearest faces
    ray_pipeline.py  --engine ray: both on a Ray cluster (Ray Data), one row per image, resumable

The Ray pipeline's Python API is here too: :func:`ray_detect` (a ``ray.data.Dataset`` of rows),
:func:`write` (streamed to Parquet or JSONL), :func:`run_corpus` (resume, write, summary), with
their :class:`Settings`. Ray itself is imported only when they run (``pip install "facefuse[ray]"``).
"""

__all__ = ["Settings", "ray_detect", "run_corpus", "write"]


def __getattr__(name: str):
    """The Ray pipeline's names load on first use (PEP 562): the command line imports
    ``fused.apps.options`` to parse its arguments, and that must not load torch."""
    if name not in __all__:
        raise AttributeError(f"module 'fused.apps' has no attribute {name!r}")
    from . import ray_pipeline

    return getattr(ray_pipeline, name)
