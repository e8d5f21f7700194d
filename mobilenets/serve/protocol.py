"""The Open Inference Protocol (KServe v2, which Triton implements) over HTTP: the request and
response bodies of ``infer``, with Triton's binary-tensor extension and its classification extension.

A request body is JSON, or JSON followed by raw tensor bytes: the ``Inference-Header-Content-Length``
header says how long the JSON part is, and each input sent in binary carries ``parameters.
binary_data_size`` (its bytes, row-major, little-endian) in the order of ``inputs``. A response is
laid out the same way: an output asked for with ``parameters.binary_data`` (or every output, with
the request's ``parameters.binary_data_output``) goes after the JSON with its
``binary_data_size``. An output asked for with ``parameters.classification: k`` comes back as a
BYTES tensor of ``N x k`` strings ``"score:index:label"``, best first (Triton's form).

Every error is a ``ServeError``: an HTTP status and a one-line message, sent as ``{"error": message}``,
the protocol's error body, which ``tritonclient`` raises as ``InferenceServerException``.
"""
from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

# KServe v2 datatypes and their numpy dtypes (little-endian, as the binary extension sends them)
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
HEADER_LENGTH = "inference-header-content-length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"


class ServeError(Exception):
    """A request the server refuses: ``status`` (4xx the client's fault, 5xx the server's), a one-line
    ``message`` naming the problem, ``kind`` (a short label for metrics) and extra response headers."""

    def __init__(self, status: int, message: str, kind: str = "invalid", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, dict(headers or {})

    def body(self) -> dict:
        return {"error": self.message}


def invalid(message: str, kind: str = "invalid") -> ServeError:
    """A 400: the request breaks the protocol or does not fit the model."""
    return ServeError(400, message, kind)


@dataclass
class Tensor:
    """One input of a request: its name, datatype, shape and data (shaped)."""
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass
class RequestedOutput:
    """An output the client asked for: in binary or JSON, as raw values or as top-``classification`` labels."""
    name: str
    binary: bool
    classification: int = 0


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None  # None: every output of the model
    binary_output: bool = False            # the request's binary_data_output: the default of every output
    parameters: dict = field(default_factory=dict)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """``body`` as sent with ``Content-Encoding`` ``encoding`` (gzip, deflate or none), inflated to at
    most ``limit`` bytes: more is a 413, not a memory spike (a small compressed body can inflate to
    gigabytes)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ServeError(415, f"Content-Encoding {encoding!r} is not supported (gzip, deflate or none)", "encoding")
    d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise invalid(f"the body is not valid {encoding} data: {exc}", "encoding") from None
    if len(out) > limit:
        raise ServeError(413, f"the body inflates to more than the limit of {limit} bytes", "too_large")
    if not d.eof:
        raise invalid(f"the {encoding} body is truncated", "encoding")
    return out


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """An ``InferRequest`` from a request body and its ``Inference-Header-Content-Length`` header (None:
    the body is all JSON). Checks the protocol, not the model: a ``ServeError`` (400) names the first
    problem (malformed JSON, a missing field, a shape that does not match the data...)."""
    json_part, binary = body, b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise invalid(f"Inference-Header-Content-Length {header_length!r} is not a length within the "
                          f"body's {len(body)} bytes", "malformed")
        json_part, binary = body[:n], body[n:]
    try:
        doc = json.loads(json_part)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"the request is not valid JSON: {exc}", "malformed_json") from None
    if not isinstance(doc, dict):
        raise invalid("the request must be a JSON object with 'inputs'", "malformed")
    params = _object(doc.get("parameters"), "parameters")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise invalid("the request needs 'inputs': a non-empty list of tensors", "malformed")
    inputs, offset = [], 0
    for i, spec in enumerate(raw_inputs):
        tensor, offset = _input(spec, i, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise invalid(f"the body has {len(binary) - offset} bytes after the JSON that no input's "
                      f"binary_data_size accounts for", "malformed")
    binary_output = bool(params.get("binary_data_output", False))
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise invalid("'outputs' must be a list", "malformed")
        outputs = [_output(o, binary_output) for o in outputs]
    request_id = doc.get("id")
    return InferRequest(None if request_id is None else str(request_id), inputs, outputs, binary_output, params)


def _object(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"'{what}' must be a JSON object", "malformed")
    return value


def _input(spec, i: int, binary: bytes, offset: int) -> tuple[Tensor, int]:
    """Input ``i`` of the request, its data from the JSON or from ``binary`` at ``offset``; the new offset."""
    if not isinstance(spec, dict):
        raise invalid(f"inputs[{i}] must be a JSON object", "malformed")
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str):
        raise invalid(f"inputs[{i}] needs a 'name'", "malformed")
    if datatype not in DATATYPES:
        raise invalid(f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}", "dtype")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                            for d in shape)):
        raise invalid(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}", "shape")
    dtype, count = DATATYPES[datatype], math.prod(shape)
    size = _object(spec.get("parameters"), f"inputs[{i}].parameters").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0:
            raise invalid(f"input {name!r}: binary_data_size must be a non-negative integer", "malformed")
        if offset + size > len(binary):
            raise invalid(f"input {name!r}: binary_data_size {size} runs past the end of the body "
                          f"({len(binary) - offset} bytes left)", "malformed")
        if size != count * dtype.itemsize:
            raise invalid(f"input {name!r}: {size} bytes of binary data for a {datatype} tensor of shape "
                          f"{shape} ({count * dtype.itemsize} bytes)", "shape")
        data = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
        return Tensor(name, datatype, tuple(shape), data), offset + size
    if "data" not in spec:
        raise invalid(f"input {name!r} has neither 'data' nor a binary_data_size parameter", "malformed")
    try:
        data = np.asarray(spec["data"], dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise invalid(f"input {name!r}: 'data' is not a {datatype} array: {exc}", "dtype") from None
    if data.size != count:
        raise invalid(f"input {name!r}: {data.size} values for shape {shape} ({count})", "shape")
    return Tensor(name, datatype, tuple(shape), data.reshape(shape)), offset


def _output(spec, default_binary: bool) -> RequestedOutput:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise invalid("each of 'outputs' must be a JSON object with a 'name'", "malformed")
    params = _object(spec.get("parameters"), f"outputs {spec['name']!r} parameters")
    k = params.get("classification", 0)
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise invalid(f"output {spec['name']!r}: classification must be a non-negative integer", "malformed")
    return RequestedOutput(spec["name"], bool(params.get("binary_data", default_binary)), k)


def classification(logits: np.ndarray, k: int, labels: list[str]) -> np.ndarray:
    """Triton's classification output: for each row of ``logits``, the top ``k`` as ``"score:index:label"``
    strings (the raw output value as the score), best first; an ``N x k`` object array of bytes."""
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return np.array([[f"{row[j]:f}:{j}:{labels[j]}".encode() for j in idx] for row, idx in zip(logits, top,
                                                                                               strict=True)],
                    dtype=object).reshape(len(logits), k)


def encode_infer_response(model: str, version: str, request_id: str | None,
                          outputs: list[tuple[RequestedOutput, np.ndarray]]) -> tuple[bytes, dict[str, str]]:
    """The response body and headers for ``outputs`` (each: how it was asked for, its values: float
    logits, or a BYTES object array from ``classification``)."""
    described, chunks = [], []
    for want, value in outputs:
        is_bytes = value.dtype == object
        entry = {"name": want.name, "datatype": "BYTES" if is_bytes else _datatype(value.dtype),
                 "shape": list(value.shape)}
        if want.binary:
            raw = (_bytes_tensor(value) if is_bytes
                   else np.ascontiguousarray(value, value.dtype.newbyteorder("<")).tobytes())
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = [v.decode() for v in value.ravel()] if is_bytes else value.ravel().tolist()
        described.append(entry)
    doc = {"model_name": model, "model_version": version, "outputs": described}
    if request_id is not None:
        doc = {"id": request_id, **doc}
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return head, {"content-type": JSON_TYPE}
    return head + b"".join(chunks), {"content-type": BINARY_TYPE, HEADER_LENGTH: str(len(head))}


def _datatype(dtype: np.dtype) -> str:
    for name, dt in DATATYPES.items():
        if dt == dtype.newbyteorder("<"):
            return name
    raise ValueError(f"no KServe datatype for {dtype}")


def _bytes_tensor(value: np.ndarray) -> bytes:
    """BYTES elements in the binary extension's form: each a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(v)) + v for v in value.ravel())
