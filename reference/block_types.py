"""Recognising blocks by their structure, so the profiler and ``fused.fuse`` name them the same way.

The RetinaFace helpers (``conv_bn`` and friends) return plain ``nn.Sequential`` objects, so
they are recognised by their layers rather than by a class name; the other blocks are classes,
marked where they are defined with :func:`block_class` (this module imports none of them).
"""

from __future__ import annotations

from torch import nn

_CLASSES: list[type] = []  # filled by @block_class as the reference modules are imported


def block_class(cls: type) -> type:
    """Class decorator: instances of ``cls`` (and of its subclasses) are blocks named
    ``type(module).__name__`` by :func:`block_type`."""
    if cls not in _CLASSES:
        _CLASSES.append(cls)
    return cls


#: The one table of activations: the activation modules a block may end with, each as the name
#: of its ``torch.nn.functional`` function (``F.relu``, ``F.relu6``, ...). Blocks are recognised
#: with any of them (:func:`block_type`), and the fused kernels apply each name in their epilogue
#: (``fused.kernels.common.activate``, the same names). Matched by exact type: a subclass may
#: compute something else. To add one: a row here and its branch in ``activate``.
ACTIVATIONS: dict[type, str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.LeakyReLU: "leaky_relu",
    nn.PReLU: "prelu",
}


def activation_name(module: nn.Module | None) -> str | None:
    """``module``'s name in :data:`ACTIVATIONS` (``"relu6"`` for an ``nn.ReLU6``), or None."""
    return ACTIVATIONS.get(type(module))


def _is_activation(m: nn.Module) -> bool:
    return type(m) in ACTIVATIONS


def _is_plain_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.dilation == (1, 1) and m.padding_mode == "zeros" and m.groups == 1


def _is_depthwise_conv(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels
        and m.kernel_size == (3, 3) and m.padding == (1, 1) and m.dilation == (1, 1) and m.padding_mode == "zeros"
    )


def block_type(module: nn.Module) -> str | None:
    """The block's name as in the seeds (``"conv_bn"``, ``"conv_dw"``, ``"SSH"``, ...), or None.

    Plain ``Conv2d → BatchNorm2d`` pairs that are not one of the named helpers (ResNet
    downsamples) are ``"conv_bn_pair"``.
    """
    if isinstance(getattr(module, "block_type", None), str) and module.block_type:
        return module.block_type  # a fused module names the block it replaced
    if isinstance(module, tuple(_CLASSES)):
        return type(module).__name__
    if type(module) is not nn.Sequential:
        return None
    layers = list(module)
    if len(layers) == 6 and _is_depthwise_conv(layers[0]) and isinstance(layers[1], nn.BatchNorm2d) \
            and _is_activation(layers[2]) and isinstance(layers[3], nn.Conv2d) \
            and layers[3].kernel_size == (1, 1) and _is_plain_conv(layers[3]) \
            and isinstance(layers[4], nn.BatchNorm2d) and _is_activation(layers[5]):
        return "conv_dw"
    if len(layers) in (2, 3) and _is_plain_conv(layers[0]) and isinstance(layers[1], nn.BatchNorm2d):
        if len(layers) == 3 and not _is_activation(layers[2]):
            return None
        k = layers[0].kernel_size
        if len(layers) == 3 and k == (3, 3):
            return "conv_bn"
        if len(layers) == 3 and k == (1, 1):
            return "conv_bn1X1"
        if len(layers) == 2 and k == (3, 3):
            return "conv_bn_no_relu"
        return "conv_bn_pair"
    return None
