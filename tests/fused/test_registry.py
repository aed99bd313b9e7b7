"""The registry: fused classes declare the block types they replace; fuse(), the flag and the benchmark read it."""

import pytest
import torch
from torch import nn

import fused
import reference as R
from fused.measure import benchmark

def declared_classes():
    """Every fused class of the package that declares block types in its class statement (found
    by walking FusedModule's subclasses, so a new block needs no line here)."""
    out, stack = [], [fused.FusedModule]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__.startswith("fused.") and "block_types" in cls.__dict__:
            out.append(cls)
    return out


#: Every block type the package fuses, and the class that does it (the last declaration wins).
EXPECTED = {name: cls for cls in declared_classes() for name in cls.block_types}


class Doubler(nn.Module):
    """A block the package knows nothing about."""

    def forward(self, x):
        return 2 * x


@pytest.fixture
def registry():
    """fused.REGISTRY, restored after the test (tests here register classes of their own)."""
    saved = dict(fused.REGISTRY)
    yield fused.REGISTRY
    fused.REGISTRY.clear()
    fused.REGISTRY.update(saved)


def test_the_class_statements_fill_the_registry():
    assert fused.REGISTRY == EXPECTED
    for name, cls in fused.REGISTRY.items():
        assert issubclass(cls, fused.FusedModule) and name in fused.flag.known_block_types()
    assert fused.FusedConvBNAct.block_type == "conv_bn" and fused.FusedSSH.block_type == "SSH"
    assert {"conv_bn", "conv_bn_pair", "conv_dw", "SSH", "FPN", "IRBlock", "RetinaFace", "ResNetArcFace"} <= set(EXPECTED)
    assert EXPECTED["conv_bn_pair"] is fused.FusedConvBNAct and EXPECTED["IRBlock"] is fused.FusedIRBlock
    for cls in set(EXPECTED.values()):  # exported by name
        assert getattr(fused, cls.__name__) is cls and cls.__name__ in fused.__all__
    assert fused.register is fused.registry.register and fused.REGISTRY is fused.registry.REGISTRY


def test_a_declared_class_is_fused_flagged_and_reported(registry):
    class FusedDoubler(fused.FusedModule, Doubler, block_types=("Doubler",)):
        def fused_forward(self, x):
            return x + x

        def reference_forward(self, x):
            return Doubler.forward(self, x)

    assert registry["Doubler"] is FusedDoubler and FusedDoubler.block_type == "Doubler"
    model = fused.fuse(nn.Sequential(nn.Identity(), Doubler()))
    assert type(model[1]) is FusedDoubler and model.fuse_report.counts() == {"Doubler": 1}
    with torch.inference_mode(), fused.enabled(False, block_types={"Doubler"}), fused.recording() as rec:
        model(torch.ones(2))  # the flag knows the new type
    assert rec.fallbacks() == [("1", "fused path disabled by the flag for Doubler blocks")]


def test_register_adds_a_class_defined_elsewhere(registry):
    class FusedDoubler(fused.FusedModule, Doubler):  # no block_types: not registered by its definition
        block_type = "Doubler"

        def fused_forward(self, x):
            return x + x

    assert "Doubler" not in registry
    with pytest.raises(ValueError, match="unknown block type"):
        fused.set_enabled(False, block_types={"Doubler"})
    fused.register("Doubler", FusedDoubler)
    assert type(fused.fuse(Doubler())) is FusedDoubler
    with fused.enabled(False, block_types={"Doubler"}):
        assert not fused.is_enabled("Doubler")


def test_a_subclass_without_block_types_keeps_the_registered_class(registry):
    class Tweaked(fused.FusedSSH):
        pass

    assert registry["SSH"] is fused.FusedSSH and Tweaked.block_type == "SSH"

    class Replacing(fused.FusedSSH, block_types="SSH"):  # one name as a string is one type, not its letters
        pass

    assert registry["SSH"] is Replacing and "S" not in registry


@pytest.mark.parametrize("bad", [(), ("",), (3,), 3])
def test_block_type_names_are_checked(registry, bad):
    with pytest.raises(TypeError, match="block type name"):
        class Bad(fused.FusedModule, Doubler, block_types=bad):
            pass
    with pytest.raises(TypeError, match="block type name"):
        fused.register(bad, fused.FusedSSH)


def test_benchmark_families_follow_the_registry(registry):
    """A family is offered once every block type it benchmarks is registered."""
    assert set(benchmark.families()) == {n for n, f in benchmark.FAMILIES.items() if set(f.block_types) <= set(registry)}
    del registry["SSH"]
    assert "ssh" not in benchmark.families() and "fpn" in benchmark.families()
