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


#: ``Config.precision`` values: ``"auto"`` is what ``fuse()`` does on the target GPU (see :func:`gpu_precision`).
PRECISIONS = ("auto", "ieee", "tf32")


def gpu_precision(precision: str = "auto") -> str:
    """The float32 dot precision ``fuse(model, precision=precision)`` gives on the GPUs ``facefuse
    inspect`` targets (all have TF32 tensor cores): ``"auto"`` follows PyTorch's
    ``torch.backends.cudnn.allow_tf32`` (True by default) as :func:`fused.base.float32_precision`
    does on such a GPU, so it is ``"tf32"`` with PyTorch's defaults."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    return precision


@dataclass(frozen=True)
class Config:
    """One dry run: a model at one input size, batch, dtype, memory format and float32 dot
    precision: ``"ieee"``, ``"tf32"``, or ``"auto"`` (the default), which is resolved when the
    configuration is made, in this process, by :func:`gpu_precision`: what ``fuse()`` does on an
    H100 (TF32 with PyTorch's defaults)."""

    model: str
    size: tuple[int, int]
    batch: int
    dtype: str = "float16"
    memory_format: str = "nchw"
    precision: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "precision", gpu_precision(self.precision))

    @property
    def dot_precision(self) -> str:
        """The precision the kernels' dots get: :attr:`precision` for float32, ``"ieee"`` otherwise."""
        return self.precision if self.dtype == "float32" else "ieee"

    @property
    def name(self) -> str:
        fmt = "" if self.memory_format == "nchw" else " channels_last"
        prec = f" {self.dot_precision}" if self.dtype == "float32" else ""
        return f"{self.model} {self.size[0]}x{self.size[1]} b{self.batch} {self.dtype}{fmt}{prec}"

    def to_json(self) -> dict:
        return {"model": self.model, "size": list(self.size), "batch": self.batch, "dtype": self.dtype,
                "memory_format": self.memory_format, "precision": self.precision}

    @classmethod
    def from_json(cls, d: dict) -> "Config":
        return cls(d["model"], tuple(d["size"]), int(d["batch"]), d.get("dtype", "float16"),
                   d.get("memory_format", "nchw"), d.get("precision", "auto"))


def _shape(arg) -> list[int]:
    return arg["shape"] if isinstance(arg, dict) else []


def launch_flops(kernel: str, args: dict, grid) -> tuple[int, int]:
    """``(tl.dot FLOPs, other FLOPs)`` of one launch, from its arguments: the useful arithmetic
    (2 per multiply-add), not what masked or recomputed lanes add."""
    name = kernel.split(":")[-1]
    if name == "conv2d_bias_act_kernel":
        return 2 * args["pixels"] * args["K"] * args["C"] * args["R"] ** 2, 0
    if name == "conv2d_splitk_reduce_kernel":  # the sum of a split-K conv's partials
        return 0, args["pixels"] * args["K"] * (args["SPLIT_K"] - 1)
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
    """The variant (kernel, specialisation, launch options) of a described launch."""
    options = {"num_warps": described["options"].get("num_warps", 4),
               "num_stages": described["options"].get("num_stages", 3)}
    return {"kernel": specialize.kernel_path(kernel), "spec": specialize.specialise(kernel, described["args"]),
            "options": options}


def plan_of_autotuned(kernel, grid, args, kwargs):
    """``(kernel, grid, kwargs, candidates)`` of the launch a GPU would start from.

    A launcher that autotunes (:func:`fused.kernels.common.autotuning`, as on a GPU) hands
    :func:`fused.runtime.launch` a ``triton.autotune`` wrapper, a grid that is a function of the
    chosen config and no ``BLOCK_*``: the configuration is picked by timing on the GPU. The dry
    run asks the wrapper for the configurations it would time (its ``early_config_prune``, the
    launcher's plan first) and records the first, the deterministic plan; ``candidates`` lists all
    of them as ``[BLOCK_M, BLOCK_N, BLOCK_C, num_warps, num_stages]`` (a GPU may pick any). A
    plain launch is returned as is, with ``candidates`` None.
    """
    from triton.runtime.autotuner import Autotuner

    if not isinstance(kernel, Autotuner):
        return kernel, grid, kwargs, None
    named = dict(zip(kernel.arg_names, args))
    saved = getattr(kernel, "nargs", None)
    kernel.nargs = named  # what Autotuner.run sets before it prunes
    try:
        configs = kernel.prune_configs(kwargs)
    finally:
        kernel.nargs = saved
    first = configs[0]
    chosen = {**kwargs, **first.kwargs, "num_warps": first.num_warps, "num_stages": first.num_stages}
    if callable(grid):
        grid = grid({**named, **chosen})
    candidates = [[c.kwargs.get("BLOCK_M"), c.kwargs.get("BLOCK_N"), c.kwargs.get("BLOCK_C"), c.num_warps,
                   c.num_stages] for c in configs]
    return kernel.fn, grid, chosen, candidates


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
        kernel, grid, kwargs, candidates = plan_of_autotuned(kernel, grid, args, kwargs)
        described = specialize.describe_arguments(kernel, args, kwargs)
        variant = _variant(kernel, described)
        launches.append({"kernel": variant["kernel"], "grid": [int(g) for g in grid], "args": described["args"],
                         "variant": variant, "candidates": candidates,
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
