"""Triton fused kernels for the reference blocks and the switch that swaps them in (measurement: fused.measure).

    import fused
    model = fused.fuse(reference.retinaface())   # swap every supported block, in place
    with torch.inference_mode():
        out = model(x)                            # Triton kernels
        with fused.enabled(False):
            ref = model(x)                        # the same model, reference forward
"""

import sys as _sys

__all__ = [
    "fuse", "cuda_graph", "CudaGraphModel", "register", "REGISTRY", "FuseReport", "FusedModule", "refresh", "verify_folds",
    "enabled", "is_enabled", "set_enabled", "recording", "backend", "device",
    "fold_batchnorm", "batchnorm_affine", "fold_input_affine", "conv_bn", "conv_bn_no_relu", "conv_bn1X1", "conv_dw",
    "assert_close", "max_error", "reduction_length", "tolerance",
]  # import_all() adds every fused class, read from the registry its class statement filled


def import_all() -> None:
    """Import every kernel and fused module and the package's names. ``import fused`` does it, except
    in the ``facefuse`` command, which parses its arguments before it loads torch and the kernels."""
    from . import runtime  # noqa: F401  (first: sets TRITON_INTERPRET before any kernel is decorated)
    from .base import FusedModule, refresh, verify_folds
    from .kernels import ops  # noqa: F401  (registers torch.ops.facefuse.*, for torch.compile and torch.export)
    # Each fused module's class statement registers it for fuse() (fused.registry): import them all here.
    from .arcface import FusedResNetArcFace
    from .conv_bn_act import FusedConvBNAct, conv_bn, conv_bn1X1, conv_bn_no_relu
    from .conv_dw import FusedConvDW, conv_dw
    from .residual_blocks import FusedBasicBlock, FusedBottleneck, FusedIRBlock
    from .squeeze_excite import FusedSEBlock
    from .ssh import FusedSSH
    from .fpn import FusedFPN
    from .heads import FusedBboxHead, FusedClassHead, FusedLandmarkHead
    from .retinaface import FusedRetinaFace
    from .stems import FusedIntermediateLayers, FusedResNet50
    from .flag import enabled, is_enabled, set_enabled
    from .folding import batchnorm_affine, fold_batchnorm, fold_input_affine
    from .fuse import FuseReport, fuse
    from .graphs import CudaGraphModel, cuda_graph
    from .registry import REGISTRY, register
    from .record import recording
    from .runtime import backend, device
    from .tolerance import assert_close, max_error, reduction_length, tolerance
    globals().update({name: value for name, value in locals().items()})
    __all__.extend(sorted({cls.__name__ for cls in REGISTRY.values()} - set(__all__)))


def _is_command_line() -> bool:
    """Whether this process is the ``facefuse`` command: ``python -m fused`` or the ``facefuse`` script."""
    argv = getattr(_sys, "orig_argv", [])
    i = 1
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-c":  # the interpreter's own options
        if argv[i] == "-m":
            return argv[i + 1:i + 2] == ["fused"]
        i += 2 if argv[i] in ("-X", "-W") else 1
    script = _sys.argv[0].replace("\\", "/").rsplit("/", 1)[-1] if _sys.argv else ""
    return script.split(".")[0] in ("facefuse", "facefuse-script")


def __getattr__(name: str):
    """In the ``facefuse`` command, the package's names load on first use (PEP 562)."""
    if name not in __all__ and not name.startswith("Fused"):  # a submodule not imported yet, or no name
        raise AttributeError(f"module 'fused' has no attribute {name!r}")
    import_all()
    if name not in globals():
        raise AttributeError(f"module 'fused' has no attribute {name!r}")
    return globals()[name]


if not _is_command_line():
    import_all()
