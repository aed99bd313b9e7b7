"""Triton fused kernels for the reference blocks and the switch that swaps them in (measurement: fused.measure).

    import fused
    model = fused.fuse(reference.retinaface())   # swap every supported block, in place
    with torch.inference_mode():
        out = model(x)                            # Triton kernels
        with fused.enabled(False):
            ref = model(x)                        # the same model, reference forward
"""

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
from .folding import batchnorm_affine, fold_batchnorm
from .fuse import FuseReport, fuse
from .graphs import CudaGraphModel, cuda_graph
from .registry import REGISTRY, register
from .record import recording
from .runtime import backend, device
from .tolerance import assert_close, max_error, reduction_length, tolerance

__all__ = [
    "fuse", "cuda_graph", "CudaGraphModel", "register", "REGISTRY", "FuseReport", "FusedModule", "refresh", "verify_folds",
    "enabled", "is_enabled", "set_enabled", "recording", "backend", "device",
    "fold_batchnorm", "batchnorm_affine", "conv_bn", "conv_bn_no_relu", "conv_bn1X1", "conv_dw",
    "assert_close", "max_error", "reduction_length", "tolerance",
    # every fused class imported above, read from the registry its class statement filled
    *sorted({cls.__name__ for cls in REGISTRY.values()}),
]
