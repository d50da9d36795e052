"""The planned requests as Arrow columns: counting the contacts that get several contexts."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync_worker.plan.request_table import RequestTable, contacts_with_several_contexts


def table(pairs: list[tuple[str, str | None]], chunks: int = 1) -> RequestTable:
    """Requests of these (contact, context) pairs, their columns cut into `chunks` pieces."""
    cuts = np.linspace(0, len(pairs), chunks + 1).astype(int).tolist()

    def column(values: list[str | None]) -> pa.ChunkedArray:
        pieces = [values[a:b] for a, b in itertools.pairwise(cuts)]
        return pa.chunked_array([pa.array(p, pa.string()) for p in pieces], pa.string())

    ids = np.arange(1, len(pairs) + 1, dtype=np.int64)
    contacts = column([c for c, _x in pairs])
    return RequestTable(
        position=ids - 1,
        interview_id=ids,
        fields={},
        context_json=column([x for _c, x in pairs]),
        contact=contacts,
        merge=contacts,
    )


def plainly(pairs: list[tuple[str, str | None]]) -> int:
    """The definition, in Python: contacts with more than one distinct context sent."""
    contexts: dict[str, set[str]] = {}
    for contact, context in pairs:
        if context is not None:
            contexts.setdefault(contact, set()).add(context)
    return sum(1 for sent in contexts.values() if len(sent) > 1)


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], 0),
        ([("a", "x")], 0),
        ([("a", "x"), ("a", "x")], 0),
        ([("a", "x"), ("a", "y")], 1),
        ([("a", "x"), ("a", None)], 0),
        ([("a", None), ("a", None)], 0),
        ([("a", "x"), ("b", "y"), ("a", "y"), ("b", "x"), ("c", "x")], 2),
        ([("a", ""), ("a", "x")], 1),
    ],
    ids=[
        "none",
        "one",
        "same-twice",
        "two",
        "one-and-no-context",
        "no-context",
        "two-each",
        "empty-text-is-a-context",
    ],
)
def test_contacts_with_several_contexts(pairs: list[tuple[str, str | None]], expected: int) -> None:
    assert contacts_with_several_contexts(table(pairs)) == expected == plainly(pairs)


@given(
    st.lists(st.tuples(st.sampled_from("abcd"), st.none() | st.sampled_from(["x", "y", "z", ""]))),
    st.integers(1, 4),
)
def test_contacts_with_several_contexts_whatever_the_chunks(
    pairs: list[tuple[str, str | None]], chunks: int
) -> None:
    """Values are numbered with one dictionary across chunks: the same text in two chunks is
    one context, never two."""
    assert contacts_with_several_contexts(table(pairs, chunks)) == plainly(pairs)
