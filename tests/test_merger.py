from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync_worker.merger import Context, MergeRules, fold, merge, parse_context

RULES = MergeRules.build("\n\n", ["evaluation_notes"])


@pytest.mark.parametrize(
    ("existing", "new", "expected"),
    [
        (None, "new", "new"),
        ("old", None, "old"),
        ("old", "new", "old\n\nnew"),
        ("old and new", "new", "old and new"),
        ("", "new", "new"),
        ({"a": 1, "b": 2}, {"b": 3, "c": 4}, {"a": 1, "b": 3, "c": 4}),
        ({"n": {"x": 1, "y": 2}}, {"n": {"y": 3}}, {"n": {"x": 1, "y": 3}}),
        (
            {"evaluation_notes": "POC"},
            {"evaluation_notes": "pricing"},
            {"evaluation_notes": "POC\n\npricing"},
        ),
        (
            {"evaluation_notes": "POC, pricing"},
            {"evaluation_notes": "pricing"},
            {"evaluation_notes": "POC, pricing"},
        ),
        ({"title": "CTO"}, {"title": "CEO"}, {"title": "CEO"}),
        ("old text", {"title": "CTO"}, {"title": "CTO", "notes": "old text"}),
        ("old text", {"notes": "new"}, {"notes": "old text\n\nnew"}),
        ({"title": "CTO"}, "new text", {"title": "CTO", "notes": "new text"}),
        ({"notes": "old"}, "new", {"notes": "old\n\nnew"}),
        ({"notes": "old"}, {"notes": "new"}, {"notes": "old\n\nnew"}),
        ("old", {"notes": {"x": 1}}, {"notes": {"x": 1, "notes": "old"}}),
    ],
    ids=[
        "nothing-known",
        "nothing-new",
        "text+text",
        "text-already-there",
        "empty-existing",
        "object+object",
        "nested",
        "append-key",
        "append-key-contained",
        "new-value-wins",
        "text+object",
        "text+object-with-notes",
        "object+text",
        "object+text-into-notes",
        "notes-always-appended",
        "text+object-nested-notes",
    ],
)
def test_merge_rules(existing: Context | None, new: Context | None, expected: Context) -> None:
    assert merge(existing, new, RULES) == expected


def test_custom_separator() -> None:
    assert merge("a", "b", MergeRules.build(" | ", [])) == "a | b"


def test_fold_in_order() -> None:
    assert fold("a", ["b", {"k": 1}, "c"], RULES) == {"k": 1, "notes": "a\n\nb\n\nc"}


json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
keys = st.sampled_from(["notes", "title", "evaluation_notes", "stage", "k"]) | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
objects = st.dictionaries(keys, json_values, max_size=5)
texts = st.text(min_size=1, max_size=40)
contexts = texts | objects


@given(existing=contexts, new=contexts)
def test_idempotent(existing: Context, new: Context) -> None:
    once = merge(existing, new, RULES)
    assert merge(once, new, RULES) == once


@given(existing=contexts, news=st.lists(contexts, min_size=1, max_size=3))
def test_nightly_rerun_of_a_batch_changes_nothing(existing: Context, news: list[Context]) -> None:
    once = fold(existing, news, RULES)
    assert fold(once, news, RULES) == once


@given(existing=objects, new=contexts)
def test_never_drops_an_existing_key(existing: dict[str, Any], new: Context) -> None:
    merged = merge(existing, new, RULES)
    assert isinstance(merged, dict)
    assert set(existing) <= set(merged)


@given(existing=texts, new=contexts)
def test_never_loses_existing_text(existing: str, new: Context) -> None:
    merged = merge(existing, new, RULES)
    assert existing in (merged if isinstance(merged, str) else _all_text(merged))


@given(existing=contexts, new=contexts)
def test_result_is_what_the_api_accepts(existing: Context, new: Context) -> None:
    merged = merge(existing, new, RULES)
    assert isinstance(merged, str | dict)
    assert json.loads(json.dumps(merged)) == merged


def _all_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(_all_text(v) for v in value.values())
    if isinstance(value, list):
        return "\n".join(_all_text(v) for v in value)
    return ""


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"a": "\\ud800"}', "lone surrogate \\ud800"),
        ('{"\\udfff": 1}', "lone surrogate \\udfff"),
        ('{"a": ["x", {"b": "\\udc00"}]}', "lone surrogate \\udc00"),
        ('{"a": NaN}', "NaN is not a JSON number"),
        ('{"a": Infinity}', "Infinity is not a JSON number"),
        ('{"a": -Infinity}', "-Infinity is not a JSON number"),
        ('{"a": 1e400}', "1e400 is too large"),
        ('{"a": -1E+999}', "-1E+999 is too large"),
        ('{"a": ' + "9" * 5000 + "}", "more than 4300 digits"),
        ('{"a": ' * 101 + "1" + "}" * 101, "nested deeper than 100"),
        ('{"a": ' * 5000 + "1" + "}" * 5000, "nested deeper than 100"),
        ('{"a": 1', "not valid JSON (Expecting"),
        ("{}" + "x", "not valid JSON (Extra data"),
    ],
    ids=[
        "lone-high-surrogate",
        "surrogate-key",
        "surrogate-nested",
        "nan",
        "infinity",
        "minus-infinity",
        "overflow",
        "overflow-exponent",
        "huge-integer",
        "too-deep",
        "deeper-than-python",
        "truncated",
        "extra-data",
    ],
)
def test_parse_context_takes_only_strict_json(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="JSON") as error:
        parse_context(text)
    assert problem in str(error.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": "\\ud83d\\ude00"}', {"a": "\U0001f600"}),  # a surrogate pair is one character
        ('{"a": "\\\\ud800"}', {"a": "\\ud800"}),  # an escaped backslash, then text
        ('{"a": 1e-400}', {"a": 0.0}),  # underflow is a number
        ('{"a": ' * 100 + "1" + "}" * 100, json.loads('{"a": ' * 100 + "1" + "}" * 100)),
        ("NaN", "NaN"),  # plain text, not JSON at all
    ],
    ids=["surrogate-pair", "escaped-backslash", "underflow", "deep-but-allowed", "text-nan"],
)
def test_parse_context_keeps_what_is_strict_json(text: str, value: Context) -> None:
    assert parse_context(text) == value


strict_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
strict_objects = st.dictionaries(
    st.text(max_size=5),
    st.recursive(
        strict_scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=10,
    ),
    max_size=5,
)


@given(value=strict_objects)
def test_parse_context_reads_back_any_strict_object(value: dict[str, Any]) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
        assert parse_context(text) == value
