"""The dry run: a fused model's forward at real GPU shapes, recording every launch, running none.

The model and its input live on the ``meta`` device (shapes, no data: a 16 x 3 x 640 x 640 batch
costs nothing), and :func:`fused.runtime.recording_launches` turns each ``runtime.launch`` into a
record. The launchers take their GPU decisions: this runs in a process where Triton compiles
(``TRITON_INTERPRET=0``, see :mod:`.worker`), so ``fused.runtime.INTERPRETED`` is False and every
``*_plan`` function gives the GPU's tiles and grids. :func:`dry_run` refuses to run in an
interpreter-mode process, where plans and kernels would be the interpreter's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from . import specialize

#: Model configurations ``facefuse inspect`` and its CI checks use by default: the real shapes.
DEFAULT_CONFIGS = (
    {"model": "retinaface", "size": (640, 640), "batch": 1},
    {"model": "retinaface", "size": (640, 640), "batch": 16},
    {"model": "retinaface-resnet50", "size": (640, 640), "batch": 1},
    {"model": "arcface", "size": (128, 128), "batch": 64},
    {"model": "arcface-se", "size": (128, 128), "batch": 64},
)
DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Config:
    """One dry run: a model at one input size, batch, dtype, memory format and fp32 dot precision."""

    model: str
    size: tuple[int, int]
    batch: int
    dtype: str = "float16"
    memory_format: str = "nchw"
    precision: str = "ieee"

    @property
    def name(self) -> str:
        fmt = "" if self.memory_format == "nchw" else " channels_last"
        prec = " tf32" if self.precision == "tf32" and self.dtype == "float32" else ""
        return f"{self.model} {self.size[0]}x{self.size[1]} b{self.batch} {self.dtype}{fmt}{prec}"

    def to_json(self) -> dict:
        return {"model": self.model, "size": list(self.size), "batch": self.batch, "dtype": self.dtype,
                "memory_format": self.memory_format, "precision": self.precision}

    @classmethod
    def from_json(cls, d: dict) -> "Config":
        return cls(d["model"], tuple(d["size"]), int(d["batch"]), d.get("dtype", "float16"),
                   d.get("memory_format", "nchw"), d.get("precision", "ieee"))


def _shape(arg) -> list[int]:
    return arg["shape"] if isinstance(arg, dict) else []


def launch_flops(kernel: str, args: dict, grid) -> tuple[int, int]:
    """``(tl.dot FLOPs, other FLOPs)`` of one launch, from its arguments: the useful arithmetic
    (2 per multiply-add), not what masked or recomputed lanes add."""
    name = kernel.split(":")[-1]
    if name == "conv2d_bias_act_kernel":
        return 2 * args["pixels"] * args["K"] * args["C"] * args["R"] ** 2, 0
    if name == "conv_dw_fused_kernel":
        return 2 * args["pixels"] * args["C"] * args["K"], 2 * 9 * args["pixels"] * args["C"]
    if name in ("lateral_upsample_add_kernel", "anchor_heads_kernel"):
        return 2 * args["pixels"] * args["C"] * args["K"], 0
    if name == "depthwise_conv_bias_act_kernel":
        return 0, 2 * 9 * args["pixels"] * args["C"]
    if name == "se_squeeze_partial_kernel":
        return 0, math.prod(_shape(args["x_ptr"]))
    if name == "se_squeeze_finish_kernel":
        return 0, args["count"] * args["splits"]
    if name == "se_excite_kernel":
        return 0, 4 * grid[0] * args["C"] * args["hidden"]
    if name == "se_scale_residual_act_kernel":
        return 0, 2 * math.prod(_shape(args["y_ptr"]))
    return 0, 0


def _variant(kernel, described: dict) -> dict:
    options = {"num_warps": described["options"].get("num_warps", 4),
               "num_stages": described["options"].get("num_stages", 3)}
    return {"kernel": specialize.kernel_path(kernel), "spec": specialize.specialise(kernel, described["args"]),
            "options": options}


def variant_id(variant: dict) -> str:
    """A stable text key of a variant (kernel, specialisation, options), for deduplication."""
    return json.dumps(variant, sort_keys=True, default=str)


def build_meta_model(config: Config):
    """The fused model of ``config`` on the meta device, and an input for it."""
    import fused
    from .. import models

    dtype = DTYPE_NAMES[config.dtype]
    fmt = models.MEMORY_FORMATS[config.memory_format]
    model = models.build_model(config.model, seed=0).to(dtype=dtype, memory_format=fmt)
    fused.fuse(model, precision=config.precision)
    model = model.to("meta")
    x = torch.empty(models.input_shape(config.model, config.size, config.batch), dtype=dtype,
                    device="meta").contiguous(memory_format=fmt)
    return model, x


def dry_run(config: Config) -> list[dict]:
    """Every launch of the fused forward of ``config``, in order: ``kernel`` ("module:name"),
    ``block`` (the model path), ``grid``, ``args`` (described, :func:`~.specialize.describe_arguments`),
    ``variant`` (kernel, specialisation, options) and ``flops`` (dot, other)."""
    import fused
    from fused import runtime

    if runtime.INTERPRETED:
        raise RuntimeError("dry_run needs a process where Triton compiles (TRITON_INTERPRET=0), so that the "
                           "launchers take their GPU decisions; facefuse inspect runs it in a worker process")
    model, x = build_meta_model(config)
    launches = []

    def record(kernel, grid, args, kwargs):
        described = specialize.describe_arguments(kernel, args, kwargs)
        variant = _variant(kernel, described)
        launches.append({"kernel": variant["kernel"], "grid": [int(g) for g in grid], "args": described["args"],
                         "variant": variant,
                         "flops": launch_flops(variant["kernel"], described["args"], list(grid))})

    with torch.inference_mode(), fused.recording() as rec, runtime.recording_launches(record):
        model(x)
    kernels = [e for e in rec.events if e.kind == "kernel"]
    fallbacks = [e for e in rec.events if e.kind == "fallback"]
    if fallbacks:
        raise RuntimeError(f"{config.name}: blocks fell back to the reference forward in the dry run: "
                           + "; ".join(f"{e.block}: {e.reason}" for e in fallbacks[:3]))
    if len(kernels) != len(launches):
        raise RuntimeError(f"{config.name}: {len(kernels)} launches announced, {len(launches)} recorded")
    for event, launch in zip(kernels, launches):
        launch["block"] = event.block or "(model)"  # the model itself (RetinaFace's heads)
    return launches
