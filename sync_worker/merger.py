"""Merge new contact context into existing notes so nothing the notes held is lost.

Pure functions on JSON values. The rules (SPEC section 6):
- object + object: existing keys kept, new values win, nested objects merge the same way, text
  under an append key is appended (unless already contained);
- text + text: the new text is appended after the separator unless already contained;
- text + object: the object, with the existing text under key `notes`;
- object + text: the existing object with the text appended to its `notes` key.
`notes` is always an append key: it is where plain-text context lives, and treating it so is
what makes text + object idempotent. Every rule is idempotent: merge(merge(e, n), n) ==
merge(e, n), so a nightly run never grows notes with repeats.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

NOTES_KEY = "notes"
MAX_DEPTH = 100  # nesting a context may have: merging walks it recursively
# A lone surrogate can only come from a \\uD800-\\uDFFF escape: the text itself is valid UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")

# A contact's context: plain text or a JSON object.
Context = str | dict[str, Any]


@dataclass(frozen=True)
class MergeRules:
    separator: str = "\n\n"
    append_keys: frozenset[str] = frozenset({NOTES_KEY})

    @classmethod
    def build(cls, separator: str, append_keys: Iterable[str]) -> MergeRules:
        return cls(separator, frozenset({NOTES_KEY, *append_keys}))


def parse_context(text: str) -> Context:
    """Text starting with "{" is a JSON object; any other text is itself.

    Only strict JSON (RFC 8259) passes, since the value is sent on as JSON: no NaN or
    Infinity, no number that overflows to infinity, no lone surrogate (it cannot be encoded as
    UTF-8), no nesting deeper than MAX_DEPTH (merging walks it recursively).
    Raises ValueError saying what is wrong; the caller names the file, row and column."""
    if not text.startswith("{"):
        return text
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at char {exc.pos})") from None
    except RecursionError:
        raise ValueError(f"not usable JSON (nested deeper than {MAX_DEPTH} levels)") from None
    except ValueError as exc:  # from the hooks, or an integer too long to convert
        raise ValueError(f"not valid JSON ({_number_problem(exc)})") from None
    if not isinstance(value, dict):
        raise ValueError("JSON is not an object")
    _check_strict(text, value)
    return value


def _number_problem(exc: ValueError) -> str:
    if "digits" in str(exc):  # Python's guard against quadratic int parsing
        return "a number has more than 4300 digits"
    return str(exc)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number: strict JSON has no NaN or Infinity")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise ValueError(f"{literal} is too large for a JSON number")
    return number


def _check_strict(text: str, value: dict[str, Any]) -> None:
    """What json.loads accepts but strict JSON does not; scanned only when the text hints at
    it, so the usual context costs two substring counts."""
    if text.count("{") + text.count("[") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise ValueError(f"not usable JSON (nested deeper than {MAX_DEPTH} levels)")
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        lone = _lone_surrogate(value)
        if lone is not None:
            raise ValueError(
                f"not valid JSON (lone surrogate \\u{ord(lone):04x} escape: "
                "not a character, cannot be sent as UTF-8)"
            )


def _deeper_than(value: Any, levels: int) -> bool:
    """Stops at `levels`, so the walk never recurses deeper than the limit it checks."""
    if not isinstance(value, dict | list):
        return False
    if levels == 0:
        return True
    children = value.values() if isinstance(value, dict) else value
    return any(_deeper_than(child, levels - 1) for child in children)


def _lone_surrogate(value: Any) -> str | None:
    """The first character of a key or text that UTF-8 cannot encode, if any."""
    texts: list[str] = []
    _collect_texts(value, texts)
    for piece in texts:
        found = _SURROGATE.search(piece)
        if found:
            return found.group()
    return None


def _collect_texts(value: Any, into: list[str]) -> None:
    if isinstance(value, str):
        into.append(value)
    elif isinstance(value, dict):
        into.extend(value)
        for item in value.values():
            _collect_texts(item, into)
    elif isinstance(value, list):
        for item in value:
            _collect_texts(item, into)


def canonical(value: Any) -> str:
    """The one JSON text of a value: sorted keys, no spaces, UTF-8 as is (what is sent, hashed
    and remembered; plan/vectorjson.py builds the same bytes for whole columns)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def merge(existing: Context | None, new: Context | None, rules: MergeRules) -> Context | None:
    """Combine existing notes with new context; None means 'nothing known'."""
    if existing is None:
        return new
    if new is None:
        return existing
    merged: Context = _merge_value(existing, new, rules)
    return merged


def fold(existing: Context | None, news: Iterable[Context], rules: MergeRules) -> Context | None:
    """Merge several new contexts, in order, onto the existing notes."""
    result = existing
    for new in news:
        result = merge(result, new, rules)
    return result


def append_text(existing: str, new: str, separator: str) -> str:
    """Append `new` after the separator unless `existing` already holds it."""
    if new in existing:
        return existing
    if not existing:
        return new
    return f"{existing}{separator}{new}"


def _merge_value(existing: Any, new: Any, rules: MergeRules) -> Any:
    if existing == new:
        return existing
    if isinstance(existing, str) and isinstance(new, str):
        return append_text(existing, new, rules.separator)
    if isinstance(existing, dict) and isinstance(new, dict):
        return _merge_objects(existing, new, rules)
    if isinstance(existing, str) and isinstance(new, dict):
        merged = dict(new)
        merged[NOTES_KEY] = _merge_notes(existing, new.get(NOTES_KEY), rules)
        return merged
    if isinstance(existing, dict) and isinstance(new, str):
        merged = dict(existing)
        merged[NOTES_KEY] = _merge_notes(existing.get(NOTES_KEY), new, rules)
        return merged
    return new


def _merge_notes(existing: Any, new: Any, rules: MergeRules) -> Any:
    """Combine two `notes` values without losing either: a number or list counts as its text."""
    if existing is None or existing == new:
        return new
    if new is None:
        return existing
    return _merge_value(_as_context(existing), _as_context(new), rules)


def _as_context(value: Any) -> Any:
    if isinstance(value, str | dict):
        return value
    return json.dumps(value, ensure_ascii=False)


def _merge_objects(existing: dict[str, Any], new: dict[str, Any], rules: MergeRules) -> Any:
    merged = dict(existing)
    for key, value in new.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = _merge_objects(merged[key], value, rules)
        elif key in rules.append_keys:
            merged[key] = _merge_notes(merged[key], value, rules)
        else:
            merged[key] = value
    return merged
