"""Payload digests: SHA-256 of a request's canonical JSON, kept as 32-byte Arrow values by the
state and compared by the planner."""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

Ints = npt.NDArray[np.int64]


def sha256_hex(body_json: bytes) -> str:
    return hashlib.sha256(body_json).hexdigest()


DIGEST = pa.binary(32)  # a SHA-256 digest as 32 bytes: half its hex text, and no offsets
_NIBBLES = np.full(256, 255, dtype=np.uint8)  # lower-case hex digit -> its value; others 255
_NIBBLES[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)


def digest_texts(digests: pa.Array | pa.ChunkedArray) -> list[str]:
    """Digests (DIGEST, no nulls) as hex text, from their bytes in one piece: ~4x faster than
    `.hex()` on each `to_pylist` item."""
    array = digests.combine_chunks() if isinstance(digests, pa.ChunkedArray) else digests
    width = DIGEST.byte_width
    data = memoryview(array.buffers()[1])[
        array.offset * width : (array.offset + len(array)) * width
    ]
    text = data.hex()
    return [text[at : at + 2 * width] for at in range(0, len(text), 2 * width)]


def hex_digests(texts: pa.Array) -> pa.Array:
    """Hex text (as hexdigest writes it: 64 lower-case digits) as 32-byte digests, for a whole
    array at once; null where a text is not such a hash (it can then equal no payload's)."""
    texts = pc.cast(texts, pa.string())
    length = len(texts)
    if not length:
        return pa.array([], DIGEST)
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int32)
    offsets = offsets[texts.offset : texts.offset + length + 1]
    data = texts.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    sized = (np.diff(offsets) == 64) & texts.is_valid().to_numpy(zero_copy_only=False)
    if sized.all():  # the usual case: the texts back to back, read in place
        nibbles = _NIBBLES[raw[offsets[0] : offsets[-1]].reshape(length, 64)]
    else:
        nibbles = np.full((length, 64), 255, dtype=np.uint8)
        starts = offsets[:-1][sized].astype(np.int64)
        nibbles[sized] = _NIBBLES[raw[starts[:, None] + np.arange(64)]]
    valid = ~(nibbles == 255).any(axis=1)
    digests = np.where(valid[:, None], (nibbles[:, 0::2] << 4) | nibbles[:, 1::2], 0)
    validity = pa.array(valid).buffers()[1] if not valid.all() else None
    return pa.FixedSizeBinaryArray.from_buffers(
        DIGEST, length, [validity, pa.py_buffer(digests.astype(np.uint8).tobytes())]
    )
