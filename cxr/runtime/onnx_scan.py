"""A minimal protobuf walk over an ONNX file: which tensors keep their data in external files, and the metadata keys.

cxr models are single files; the manifest's sha256 covers only the .onnx, so weights kept beside it (ONNX's external
data) could change unnoticed and flip decisions. `external_tensors` finds them without the `onnx` package (not a
runtime dependency) and without parsing tensor contents: it follows only the fields that can hold a TensorProto
(ModelProto.graph and .functions; GraphProto initializers, sparse initializers and nodes; NodeProto attributes;
AttributeProto t/tensors/g/graphs/sparse_tensor(s)) and skips everything else by its length, over an mmap of the file.
The metadata keys (ModelProto.metadata_props) are listed with repeats: onnxruntime's metadata map keeps one value
per key, so a file with two `cxr.card` entries would otherwise be read as either, silently. The main graph's inputs
are read with their dimensions as the file declares them (a named dimension such as the batch's `N`, a number, or
None), which onnxruntime reports only after any free-dimension override has been applied.
Field numbers are those of onnx/onnx.proto (IR version 3 onwards).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

MAX_DEPTH = 64
"""Nesting of subgraphs (If/Loop bodies inside bodies) beyond this is refused as malformed: a real model has a few."""

# message -> {field number: child message kind} for the fields that can lead to a TensorProto
_CHILDREN = {
    "model": {7: "graph", 14: "metadata", 25: "function"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_GRAPH_INPUT = 11  # GraphProto.input: ValueInfoProto {1 name, 2 type}; TypeProto {1 tensor_type}; Tensor {2 shape};
# TensorShapeProto {1 dim}; Dimension {1 dim_value, 2 dim_param}
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class MalformedModel(ValueError):
    """The bytes are not a well-formed protobuf message (or nest deeper than MAX_DEPTH)."""


@dataclass
class ModelScan:
    """What the walk found: `external` tensor names, and every metadata key in file order (repeats kept)."""

    external: list[str] = field(default_factory=list)
    metadata_keys: list[str] = field(default_factory=list)
    inputs: dict[str, list[int | str | None]] = field(default_factory=dict)
    """The main graph's inputs (GraphProto.input, initializers listed there included): name -> dims as declared."""


def scan_model(path: str | os.PathLike) -> ModelScan:
    """Walk the ONNX file at `path`. Raises MalformedModel for bytes that are no protobuf message, OSError when it
    cannot be read."""
    found = ModelScan()
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return found
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                _walk(view, 0, size, "model", 0, found)
            finally:
                view.release()
    return found


def external_tensors(path: str | os.PathLike) -> list[str]:
    """Names of the tensors in the ONNX file at `path` whose data lives outside it (data_location EXTERNAL or an
    external_data entry)."""
    return scan_model(path).external


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise MalformedModel("a varint runs past its message")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, pos: int, end: int):
    """(field number, wire type, value or (start, stop) of a length-delimited field) for each field in buf[pos:end]."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise MalformedModel("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise MalformedModel("a fixed-size field runs past its message")
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise MalformedModel("a length-delimited field runs past its message")
            yield number, wire, (pos, pos + length)
            pos += length
        else:
            raise MalformedModel(f"wire type {wire} (groups are not used by ONNX)")


def _walk(buf: memoryview, pos: int, end: int, kind: str, depth: int, found: ModelScan) -> None:
    if depth > MAX_DEPTH:
        raise MalformedModel(f"subgraphs nested deeper than {MAX_DEPTH} levels")
    if kind == "tensor":
        _tensor(buf, pos, end, found.external)
        return
    if kind == "metadata":
        for number, wire, value in _fields(buf, pos, end):
            if number == 1 and wire == 2:
                found.metadata_keys.append(bytes(buf[value[0]:value[1]]).decode("utf-8", "backslashreplace"))
        return
    children = _CHILDREN[kind]
    for number, wire, value in _fields(buf, pos, end):
        if kind == "graph" and depth == 0 and number == _GRAPH_INPUT and wire == 2:
            name, dims = _value_info(buf, value[0], value[1])
            found.inputs[name] = dims
        elif wire == 2 and number in children:
            _walk(buf, value[0], value[1], children[number], depth + (kind == "graph"), found)


def _value_info(buf: memoryview, pos: int, end: int) -> tuple[str, list[int | str | None]]:
    """(name, dims) of a ValueInfoProto of tensor type; dims empty for any other type or no shape."""
    name, dims = "", []
    for number, wire, value in _fields(buf, pos, end):
        if number == 1 and wire == 2:
            name = bytes(buf[value[0]:value[1]]).decode("utf-8", "backslashreplace")
        elif number == 2 and wire == 2:
            dims = _dims(buf, *value)
    return name, dims


def _sub(buf: memoryview, pos: int, end: int, wanted: int) -> tuple[int, int] | None:
    """The last length-delimited field numbered `wanted` in buf[pos:end] (protobuf: the last one wins)."""
    found = None
    for number, wire, value in _fields(buf, pos, end):
        if number == wanted and wire == 2:
            found = value
    return found


def _dims(buf: memoryview, pos: int, end: int) -> list[int | str | None]:
    tensor = _sub(buf, pos, end, 1)  # TypeProto.tensor_type
    shape = _sub(buf, *tensor, 2) if tensor else None  # TypeProto.Tensor.shape
    if not shape:
        return []
    dims: list[int | str | None] = []
    for number, wire, value in _fields(buf, *shape):
        if number != 1 or wire != 2:
            continue
        dim: int | str | None = None
        for n, w, v in _fields(buf, *value):
            if n == 1 and w == 0:
                dim = v - (1 << 64) if v >= 1 << 63 else v  # int64 as a varint
            elif n == 2 and w == 2:
                dim = bytes(buf[v[0]:v[1]]).decode("utf-8", "backslashreplace")
        dims.append(dim)
    return dims


def _tensor(buf: memoryview, pos: int, end: int, found: list[str]) -> None:
    name, external = "", False
    for number, wire, value in _fields(buf, pos, end):
        if number == _TENSOR_NAME and wire == 2:
            name = bytes(buf[value[0]:value[1]]).decode("utf-8", "backslashreplace")
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            external = True
        elif number == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL:
            external = True
    if external:
        found.append(name or "(unnamed)")
