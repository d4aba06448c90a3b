"""Reads a `.safetensors` file with numpy alone (no torch, no `safetensors` package).

Format: an 8-byte little-endian header length N, N bytes of JSON
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`),
then the raw little-endian tensor bytes, offsets relative to the end of the header.
"""

import json
import os
import struct

import numpy as np

from keras_vit.weights.errors import CheckpointError

_NUMPY_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
# Headers of real checkpoints are a few hundred kB; refuse absurd sizes from a corrupt file.
_MAX_HEADER_BYTES = 100 * 2**20


def _bfloat16_to_float32(raw):
    """bfloat16 is the top half of a float32: shift the 16 bits up."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path):
    """`{name: array}` of every tensor in the `.safetensors` file at `path`.

    bfloat16 tensors come back as float32; other dtypes as stored. A truncated file, a
    bad header or an unknown dtype raises `CheckpointError` naming the file.
    """

    def fail(reason):
        return CheckpointError(f"Cannot read {path} as a .safetensors file: {reason}")

    file_size = os.path.getsize(path)
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise fail(f"the file has {file_size} bytes, too short for a header (truncated?).")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > min(_MAX_HEADER_BYTES, file_size - 8):
            raise fail(f"the header claims {header_size} bytes but the file has {file_size} (truncated or not safetensors?).")
        try:
            header = json.loads(file.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise fail(f"the header is not valid JSON ({error}).") from None
        if not isinstance(header, dict):
            raise fail("the header is not a JSON object.")
        data = file.read()

    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise fail(f"bad header entry for {name!r}: {info!r}.") from None
        if end > len(data):
            raise fail(
                f"tensor {name!r} ends at byte {end} of the data but there are only {len(data)} "
                "(truncated file?)."
            )
        if dtype == "BF16":
            numpy_dtype, convert = np.dtype("<u2"), _bfloat16_to_float32
        elif dtype in _NUMPY_DTYPES:
            # np.array copies: the result must not keep the whole file's bytes alive.
            numpy_dtype, convert = np.dtype(_NUMPY_DTYPES[dtype]), np.array
        else:
            raise fail(f"tensor {name!r} has dtype {dtype}, which this reader does not handle.")
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end or end - begin != count * numpy_dtype.itemsize:
            raise fail(f"tensor {name!r} has {end - begin} bytes for shape {list(shape)} of {dtype}.")
        values = np.frombuffer(data, numpy_dtype, count=count, offset=begin)
        tensors[name] = convert(values).reshape(shape)
    return tensors
