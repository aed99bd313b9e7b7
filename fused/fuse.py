"""``fuse(model)``: swap every supported block of a reference model for its fused module, in place.

Which fused class replaces which block type is :data:`fused.REGISTRY` (:mod:`fused.registry`): a
fused class declares its block types in its class statement (``class FusedSSH(FusedModule,
reference.SSH, block_types=("SSH",))``), and :func:`register` adds one from outside. A fused
class provides ``unsupported_reason(block) -> str | None`` and ``from_reference(block) -> fused
module`` (which must keep the block's parameters and buffers).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from torch import nn

import reference

from .base import PRECISIONS, FusedModule
from .folding import unfoldable_reason
from .registry import REGISTRY


@dataclass(frozen=True)
class Swapped:
    path: str
    block_type: str
    fused_class: str


@dataclass(frozen=True)
class Skipped:
    path: str
    what: str
    reason: str


@dataclass
class FuseReport:
    """What :func:`fuse` swapped, and what it left as reference PyTorch and why."""

    swapped: list[Swapped] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.swapped:
            out[s.block_type] = out.get(s.block_type, 0) + 1
        return out

    def __str__(self) -> str:
        lines = [f"fused {len(self.swapped)} blocks: " + ", ".join(f"{n} {t}" for t, n in sorted(self.counts().items()))]
        groups: dict[tuple[str, str], list[str]] = {}
        for s in self.skipped:
            groups.setdefault((s.what, s.reason), []).append(s.path or "(model)")
        for (what, reason), paths in groups.items():
            shown = ", ".join(paths[:3]) + (f", ... ({len(paths)} in all)" if len(paths) > 3 else "")
            lines.append(f"  not fused: {len(paths)} x {what} [{shown}]: {reason}")
        return "\n".join(lines)


def fuse(model: nn.Module, *, precision: str = "auto", verbose: bool = False) -> nn.Module:
    """Replace every supported block of ``model`` with its fused module and return the model.

    The swap is in place (the same object is returned, with ``model.fuse_report`` describing what
    was swapped and what was not). Parameters and buffers are shared, so ``state_dict()`` is
    unchanged and weights load before or after fusing. ``precision`` applies to float32 inputs:
    the default ``"auto"`` does what PyTorch's own float32 convolutions do, read at each forward
    (TF32 tensor cores on GPUs that have them while ``torch.backends.cudnn.allow_tf32`` is True,
    its default; exact products otherwise and in the interpreter: :func:`fused.base.float32_precision`);
    ``"ieee"`` always computes exact float32 products, ``"tf32"`` always TF32 (about 3 decimal
    digits). A single block (``fuse(reference.conv_bn(3, 8))``) is fused in place too.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse() takes a torch.nn.Module (a reference model or block), got {type(model).__name__}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    report = FuseReport()
    if _fused_or_none(model, "", report, precision) is None or getattr(model, "fuses_children", False):
        _fuse_children(model, "", report, precision, in_skipped_block=bool(report.skipped))
    model.fuse_report = report
    if verbose:
        print(report)
    return model


def _fused_or_none(module: nn.Module, path: str, report: FuseReport, precision: str):
    """The fused version of ``module`` (the same object, converted), or None if it is not fused."""
    if isinstance(module, FusedModule):
        report.swapped.append(Swapped(path, module.block_type, type(module).__name__))
        return None
    kind = reference.block_type(module) or type(module).__name__
    if kind not in REGISTRY:
        if reference.block_type(module) is not None:
            report.skipped.append(Skipped(path, kind, "no fused module for this block type yet (any conv-BN blocks inside it are fused)"))
        return None
    fused_class = REGISTRY[kind]
    reason = _batchnorm_reason(fused_class, module) or fused_class.unsupported_reason(module)
    if reason is not None:
        report.skipped.append(Skipped(path, kind, reason))
        return None
    _warn_about_hooks(fused_class, module, path, kind)
    fused = fused_class.from_reference(module)
    fused.facefuse_path = path or None
    if hasattr(fused, "precision"):
        fused.precision = precision
    report.swapped.append(Swapped(path, kind, type(fused).__name__))
    return fused


def _inner_modules(fused_class, block: nn.Module):
    """``(path, module)`` of every module inside ``block`` whose work the fused class does itself."""
    for name in fused_class.inner_children(block):
        yield from getattr(block, name).named_modules(prefix=name)


def _batchnorm_reason(fused_class, block: nn.Module) -> str | None:
    """Why a BatchNorm the fused class would fold cannot be folded (no running statistics, or
    ``running_var + eps == 0``: :func:`fused.folding.unfoldable_reason`), or None."""
    for path, m in _inner_modules(fused_class, block):
        if not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        if m.running_mean is None or m.running_var is None:
            return (f"{path} has no running statistics (track_running_stats=False): it normalises with "
                    f"each batch's own statistics, which cannot be folded into weights")
        reason = unfoldable_reason(m)
        if reason is not None:
            return f"{path}: {reason}"
    return None


def _warn_about_hooks(fused_class, block: nn.Module, path: str, kind: str) -> None:
    """Warn if a module the fused path never calls already has forward hooks (they will not fire)."""
    hooked = [p for p, m in _inner_modules(fused_class, block) if m._forward_hooks or m._forward_pre_hooks]
    if hooked:
        where = ", ".join(f"{path}.{p}" if path else p for p in hooked)
        warnings.warn(
            f"facefuse: forward hooks on {where} will not fire on the fused path: the fused {kind} "
            f"does their work itself without calling them. Hook the {kind} block itself, or run "
            f"the reference forward for these blocks: fused.enabled(False, block_types={{{kind!r}}})",
            stacklevel=4,
        )


def _fuse_children(module: nn.Module, prefix: str, report: FuseReport, precision: str, in_skipped_block=False) -> None:
    handled = getattr(module, "handled_children", ())
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if name in handled:
            continue
        n_skipped = len(report.skipped)
        fused = _fused_or_none(child, path, report, precision)
        if fused is not None or isinstance(child, FusedModule):
            if getattr(child, "fuses_children", False):
                _fuse_children(child, path, report, precision)
            continue
        elif isinstance(child, (nn.Conv2d, nn.Linear)):
            if not in_skipped_block:  # a skipped block's own convs are covered by its line
                report.skipped.append(Skipped(path, type(child).__name__, "not part of a recognised block"))
        else:
            skipped_here = len(report.skipped) > n_skipped
            _fuse_children(child, path, report, precision, in_skipped_block or skipped_here)
