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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

NOTES_KEY = "notes"

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

    Raises ValueError saying what is wrong; the caller names the file, row and column."""
    if not text.startswith("{"):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(value, dict):
        raise ValueError("JSON is not an object")
    return value


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
