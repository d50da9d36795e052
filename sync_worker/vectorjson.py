"""Canonical JSON for whole columns at once, with Arrow compute.

Produces, string for string, what `json.dumps(value, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)` produces for the same value, so a payload hashes the same whichever way it
was built. The tests hold the two side by side.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

# json.dumps(ensure_ascii=False) escapes these, and only these, besides \\ and ".
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_CONTROL = [chr(c) for c in range(0x20)]


def escape(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """JSON string escaping, without the surrounding quotes."""
    out = pc.replace_substring(values, "\\", "\\\\")
    out = pc.replace_substring(out, '"', '\\"')
    if not pc.any(pc.match_substring_regex(out, "[\\x00-\\x1f]")).as_py():
        return out
    for char in _CONTROL:
        out = pc.replace_substring(out, char, _SHORT_ESCAPES.get(char, f"\\u{ord(char):04x}"))
    return out


def quoted(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Each text as a JSON string literal."""
    return pc.binary_join_element_wise('"', escape(values), '"', "")


def member(key: str, literal: pa.ChunkedArray | pa.Array, present: pa.ChunkedArray) -> pa.Array:
    """`"key":literal,` where `present`, "" elsewhere.

    Members carry their own trailing comma and `join_object` drops the last one: Arrow's
    null-skipping join loses rows whose members are all null (seen in pyarrow 26)."""
    text = pc.binary_join_element_wise(json.dumps(key, ensure_ascii=False) + ":", literal, ",", "")
    return pc.if_else(present, text, "")


def join_object(members: Sequence[pa.ChunkedArray | pa.Array], length: int) -> pa.Array:
    """`{m1,m2,...}` from members given in sorted key order."""
    if not members:
        return pa.array(["{}"] * length, pa.string())
    inner = pc.binary_join_element_wise(*members, "") if len(members) > 1 else members[0]
    # A member ends with '"' or '}' before its comma, so only that one comma is trimmed.
    inner = pc.utf8_rtrim(inner, characters=",")
    return pc.binary_join_element_wise("{", inner, "}", "")
