"""Split a .tflite holding several independent blocks into one model per block.

litert-torch pays ~2 s of fixed cost per ``convert`` call. Converting a chunk of blocks as
one graph (each block its own input and output) and cutting the flatbuffer apart afterwards
pays it once per chunk (DESIGN.md measured ~2x the throughput, outputs identical). A block's
model is everything its output depends on: the operators, their tensors and constant buffers.
"""

from __future__ import annotations

import copy

import flatbuffers
from ai_edge_litert import schema_py_generated as schema


class SplitError(ValueError):
    """The model's outputs do not come from disjoint single-input blocks."""


def _ints(values) -> list[int]:
    # The object API gives numpy arrays or None for index vectors.
    return [] if values is None else [int(v) for v in values]


def _pack(model: schema.ModelT) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def split_outputs(data: bytes) -> list[bytes]:
    """One model per graph output, in output order; each keeps exactly one graph input."""
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    if len(model.subgraphs) != 1:
        raise SplitError(f"expected one subgraph, found {len(model.subgraphs)}")
    graph = model.subgraphs[0]
    producer = {t: i for i, op in enumerate(graph.operators) for t in _ints(op.outputs)}
    graph_inputs = _ints(graph.inputs)
    out: list[bytes] = []
    for k, out_tensor in enumerate(_ints(graph.outputs)):
        ops: set[int] = set()
        tensors: set[int] = set()
        stack = [out_tensor]
        while stack:
            t = stack.pop()
            if t < 0 or t in tensors:
                continue
            tensors.add(t)
            if t in producer and producer[t] not in ops:
                op = graph.operators[producer[t]]
                ops.add(producer[t])
                stack.extend(_ints(op.inputs))
                stack.extend(_ints(op.outputs))
        inputs = [t for t in graph_inputs if t in tensors]
        if len(inputs) != 1:
            raise SplitError(f"output {k} depends on {len(inputs)} graph inputs, not one")
        out.append(_extract(model, graph, sorted(ops), sorted(tensors), inputs[0], out_tensor))
    return out


def _extract(model, graph, ops: list[int], tensors: list[int], inp: int, outp: int) -> bytes:
    t_map = {old: new for new, old in enumerate(tensors)}
    buffers = [schema.BufferT()]  # buffer 0 is the empty sentinel by convention
    b_map = {0: 0}
    new_tensors = []
    for old in tensors:
        t = copy.copy(graph.tensors[old])
        if t.buffer not in b_map:
            b_map[t.buffer] = len(buffers)
            buffers.append(model.buffers[t.buffer])
        t.buffer = b_map[t.buffer]
        new_tensors.append(t)
    codes: list = []
    c_map: dict[int, int] = {}
    new_ops = []
    for i in ops:
        op = copy.copy(graph.operators[i])
        if op.opcodeIndex not in c_map:
            c_map[op.opcodeIndex] = len(codes)
            codes.append(model.operatorCodes[op.opcodeIndex])
        op.opcodeIndex = c_map[op.opcodeIndex]
        op.inputs = [t_map[t] if t >= 0 else -1 for t in _ints(op.inputs)]
        op.outputs = [t_map[t] for t in _ints(op.outputs)]
        op.intermediates = [t_map[t] for t in _ints(op.intermediates)] or None
        new_ops.append(op)
    sub = schema.SubGraphT()
    sub.tensors, sub.operators = new_tensors, new_ops
    sub.inputs, sub.outputs, sub.name = [t_map[inp]], [t_map[outp]], graph.name
    part = schema.ModelT()
    part.version, part.description = model.version, model.description
    part.operatorCodes, part.subgraphs, part.buffers = codes, [sub], buffers
    sig = schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = "serving_default", 0
    ti, to = schema.TensorMapT(), schema.TensorMapT()
    ti.name, ti.tensorIndex = "args_0", t_map[inp]
    to.name, to.tensorIndex = "output_0", t_map[outp]
    sig.inputs, sig.outputs = [ti], [to]
    part.signatureDefs = [sig]
    return _pack(part)


def opcode_names(data: bytes) -> list[str]:
    """The builtin operator names of a model, in execution order (to compare conversions)."""
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    out = []
    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex]
        out.append(names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM"))
    return out
