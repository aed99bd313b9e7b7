"""The rows of a profile in a model, and what one forward pass records of each.

:func:`find_rows` names the parts of a model the profile times: every outermost block that
:func:`reference.block_type` names, and every leaf module outside all blocks. :func:`record` runs
the model once with hooks: each row's calls (its inputs, cloned) and, when counting, the FLOPs and
eager bytes of every leaf module, attributed to its row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

import reference

from .tensors import clone, leaf_flops, moves_no_data, nbytes, shapes, state_bytes


def find_rows(model: nn.Module) -> list[tuple[str, nn.Module, str, str]]:
    """``(path, module, type, kind)`` for every block (outermost module that
    :func:`reference.block_type` names) and every leaf module outside all blocks, in
    registration order. ``kind`` is ``"block"`` or ``"module"``; the type of a module outside the
    blocks is its class name."""
    rows = []
    root_type = reference.block_type(model)
    if root_type is not None:
        return [("", model, root_type, "block")]

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            kind = reference.block_type(child)
            if kind is not None:
                rows.append((path, child, kind, "block"))
            elif next(child.children(), None) is None:
                rows.append((path, child, type(child).__name__, "module"))
            else:
                visit(path, child)

    visit("", model)
    return rows


@dataclass
class Unit:
    """One row's module and what one forward pass recorded of it."""

    path: str
    module: nn.Module
    type: str
    kind: str
    calls: list = field(default_factory=list)  # [(args, kwargs)] cloned at each call
    outputs: list = field(default_factory=list)  # output shapes/bytes per call
    first_call: int = -1
    flops: int = 0
    eager_bytes: int = 0
    out_bytes: int = 0


def record(model: nn.Module, example_input, rows, *, count: bool):
    """Run ``model(example_input)`` once with hooks: every row's calls (cloned), and with
    ``count`` the FLOPs and eager bytes of every leaf module, attributed to its row."""
    units = [Unit(p, m, t, k) for p, m, t, k in rows]
    owner = {}
    for i, u in enumerate(units):
        for m in u.module.modules():
            owner.setdefault(id(m), i)
    order = [0]
    handles = []

    def pre_hook(unit):
        def hook(module, args, kwargs):
            if unit.first_call < 0:
                unit.first_call = order[0]
                order[0] += 1
            unit.calls.append((clone(args), clone(kwargs)))
        return hook

    def post_hook(unit):
        def hook(module, args, kwargs, output):
            unit.outputs.append(shapes(output))
            unit.out_bytes += nbytes(output)
        return hook

    def leaf_hook(unit):
        def hook(module, args, output):
            unit.flops += leaf_flops(module, output)
            if not moves_no_data(module):
                unit.eager_bytes += nbytes(args) + nbytes(output) + state_bytes(module)
        return hook

    try:
        for u in units:
            handles.append(u.module.register_forward_pre_hook(pre_hook(u), with_kwargs=True))
            if count:
                handles.append(u.module.register_forward_hook(post_hook(u), with_kwargs=True))
        if count:
            for m in model.modules():
                if next(m.children(), None) is None and id(m) in owner:
                    handles.append(m.register_forward_hook(leaf_hook(units[owner[id(m)]])))
        with torch.no_grad():
            output = model(example_input)
    finally:
        for h in handles:
            h.remove()
    return units, output


def run_calls(module: nn.Module, calls) -> None:
    """Call ``module`` once per recorded ``(args, kwargs)``."""
    for args, kwargs in calls:
        module(*args, **kwargs)
