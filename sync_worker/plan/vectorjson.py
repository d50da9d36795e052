"""Canonical JSON for whole columns at once, with Arrow compute.

Produces, string for string, what `json.dumps(value, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)` produces for the same value, so a payload hashes the same whichever way it
was built. The tests hold the two side by side.

An object is one join of its pieces: every member starts with a comma (`,"key":value`), and the
comma after the opening brace is dropped (for free when the first member is in every row). A
member present in every row is passed as its pieces (a prefix and the column), so it costs
nothing until that one join; a member present in some rows only is built first and is "" where
absent. The usual export has every cell of a column filled, so an object usually costs one pass
over the rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

Text: TypeAlias = pa.ChunkedArray | pa.Array
Mask = npt.NDArray[np.bool_]

# json.dumps(ensure_ascii=False) escapes these, and only these, besides \\ and ".
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_CONTROL = [chr(c) for c in range(0x20)]


def escape(values: Text) -> Text:
    """JSON string escaping, without the surrounding quotes."""
    if not _needs_escaping(values):
        return values
    out = pc.replace_substring(values, "\\", "\\\\")
    out = pc.replace_substring(out, '"', '\\"')
    for char in _CONTROL:
        out = pc.replace_substring(out, char, _SHORT_ESCAPES.get(char, f"\\u{ord(char):04x}"))
    return out


def _needs_escaping(values: Text) -> bool:
    """Any byte that JSON escapes (a quote, a backslash, a control character)? Scans the data
    buffers directly: far cheaper than a regex, and the usual column has none."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    for chunk in chunks:
        data = chunk.buffers()[2]
        if data is None:
            continue
        raw = np.frombuffer(data, dtype=np.uint8)
        if ((raw < 0x20) | (raw == 0x22) | (raw == 0x5C)).any():
            return True
    return False


Pieces = list[Text | str]  # arrays and plain strings, joined element-wise


def text_member(key: str, column: Text, present: Mask) -> Pieces:
    """`,"key":"text"` for a text column; absent where the cell is empty."""
    return _member(json.dumps(key, ensure_ascii=False) + ':"', [escape(column), '"'], present)


def literal_member(key: str, literal: Text, present: Mask) -> Pieces:
    """`,"key":<JSON literal>`; absent where `present` is false."""
    return _member(json.dumps(key, ensure_ascii=False) + ":", [literal], present)


def _member(prefix: str, rest: Pieces, present: Mask) -> Pieces:
    if not present.any():
        return []
    pieces: Pieces = ["," + prefix, *rest]
    if present.all():
        return pieces
    return [pc.if_else(pa.array(present), _join(pieces), "")]


def _join(pieces: Pieces) -> Text:
    if len(pieces) == 1 and not isinstance(pieces[0], str):
        return pieces[0]
    return pc.binary_join_element_wise(*pieces, "")


def quoted(column: Text) -> Text:
    """Each text as a JSON string literal."""
    return pc.binary_join_element_wise('"', escape(column), '"', "")


def text_literals(column: Text, present: Mask) -> pa.ChunkedArray:
    """Each text as a JSON string literal where `present`, else null."""
    literals = pc.if_else(pa.array(present), quoted(column), pa.scalar(None, pa.string()))
    return literals if isinstance(literals, pa.ChunkedArray) else pa.chunked_array([literals])


def join_object(members: Sequence[Pieces], length: int) -> Text:
    """`{...}` from members given in sorted key order."""
    members = [member for member in members if member]
    if not members:
        return pa.array(["{}"] * length, pa.string())
    first = members[0]
    in_every_row = isinstance(first[0], str)
    if in_every_row:  # its comma can go now
        members[0] = [first[0][1:], *first[1:]]
    joined = _join(["{", *[piece for member in members for piece in member], "}"])
    if in_every_row:
        return joined
    return pc.replace_substring(joined, "{,", "{", max_replacements=1)  # "{,m1,m2}" or "{}"
