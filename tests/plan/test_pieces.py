"""Pieces of planning made two at a time: in order, never more than two at once, and a stop
leaves the pieces not yet begun undone."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from helpers import write_csv

from sync_worker.plan import Memory, PlanOptions, build_plan, columns, merged, output, plan_lines
from sync_worker.plan.pieces import two_at_a_time
from sync_worker.read.reader import ReadOptions, read_batch

HEADER = ["interview_id", "contact_email", "contact_name", "objective", "context.stage"]


def test_pieces_come_in_order_two_made_at_once() -> None:
    lock = threading.Lock()
    running, most = [0], [0]

    def make(item: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01 * (item % 3))  # later pieces may end first
        with lock:
            running[0] -= 1
        return item * 10

    assert list(two_at_a_time(make, range(12))) == [i * 10 for i in range(12)]
    assert most[0] == 2


def test_a_stop_leaves_the_pieces_not_begun_undone() -> None:
    """The caller stops asking (a signal's Interrupted, or a closed generator): the pieces
    under way end, the rest are never made."""
    made: list[int] = []

    def make(item: int) -> int:
        made.append(item)
        time.sleep(0.02)
        return item

    pieces = two_at_a_time(make, range(100))
    assert next(pieces) == 0
    pieces.close()
    assert len(made) <= 3


def test_a_failing_piece_fails_the_whole() -> None:
    def make(item: int) -> int:
        if item == 3:
            raise ValueError("piece 3")
        return item

    with pytest.raises(ValueError, match="piece 3"):
        list(two_at_a_time(make, range(10)))


def test_one_piece_is_made_on_the_callers_thread() -> None:
    threads: list[str] = []
    assert list(two_at_a_time(lambda i: threads.append(threading.current_thread().name), [0]))
    assert threads == [threading.current_thread().name]


@pytest.mark.parametrize("merge", [False, True])
def test_a_plan_made_in_pieces_is_the_plan_made_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, merge: bool
) -> None:
    """Small pieces, so a few hundred rows take every threaded road (the column road's halves,
    the merge road's chunks and new contexts, the printed lines): the same bytes as whole."""
    rng = random.Random(7)
    rows = [
        [
            i if rng.random() > 0.1 else rng.randint(1, i),  # some interviews of several rows
            "" if rng.random() < 0.1 else f"c{rng.randint(1, 90)}@x.example",
            f"Name {rng.randint(1, 90)}",
            "" if rng.random() < 0.4 else "Win back",
            rng.choice(["Demo", "Lost", ""]),
        ]
        for i in range(1, 401)
    ]
    write_csv(tmp_path / "in.csv", HEADER, rows)
    batch = read_batch([str(tmp_path / "in.csv")], ReadOptions())

    def printed() -> bytes:
        plan = build_plan(batch, PlanOptions(merge=merge), Memory())
        return b"".join(plan_lines(plan, batch))

    whole = printed()
    monkeypatch.setattr(columns, "HALVES_FROM", 2)
    monkeypatch.setattr(merged, "CHUNK", 37)
    monkeypatch.setattr(output, "PRINTED", 29)
    assert printed() == whole
    assert whole.count(b"\n") > 200
