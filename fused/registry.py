"""Which fused class replaces which block type: the one table that ``fuse()``, the flag and the benchmark read.

A fused class declares the block types it replaces in its class statement, and is registered
when Python defines it::

    class FusedSSH(FusedModule, reference.SSH, block_types=("SSH",)): ...

Block types are named as by :func:`reference.block_type`. :func:`register` does the same for a
class defined elsewhere (or to swap in another class for a type). Nothing here imports the rest
of the package, so any module may read :data:`REGISTRY`.
"""

from __future__ import annotations

#: block type → fused class
REGISTRY: dict[str, type] = {}


def register(block_type: str, fused_class: type) -> None:
    """Make :func:`fused.fuse` replace blocks of ``block_type`` with ``fused_class`` (replacing any earlier class)."""
    if not isinstance(block_type, str) or not block_type:
        raise TypeError(f"block_type must be a block type name (a non-empty string), got {block_type!r}")
    REGISTRY[block_type] = fused_class


def block_type_names(block_types) -> tuple[str, ...]:
    """``block_types`` as a tuple of names: one name, or an iterable of them."""
    names = (block_types,) if isinstance(block_types, str) else tuple(block_types) if hasattr(block_types, "__iter__") else ()
    if not names or not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"block_types must be block type names (non-empty strings), got {block_types!r}")
    return names
