"""Pieces of planning made two at a time, on two threads.

Planning a million rows is mostly Arrow's and NumPy's kernels, which let go of the GIL while
they work: pieces that do not depend on each other (a chunk of printed lines, a chunk of merged
requests, a half of the column road's rows) are made two at once, so both cores work (a
million requests' printed lines took half the time). At most two pieces are being made at a
time, and a stop (a signal raising `Interrupted` in the main thread, or the caller no longer
asking) cancels every piece not yet begun and waits only for those under way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

AT_ONCE = 2  # pieces being made at a time: the machine's two cores


def two_at_a_time(make: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
    """`make(item)` for each item, in order, two made at once."""
    if len(items) < 2:
        yield from map(make, items)
        return
    pool = ThreadPoolExecutor(AT_ONCE, thread_name_prefix="sync-worker-plan")
    try:
        made: deque[Future[R]] = deque()
        for item in items:
            made.append(pool.submit(make, item))
            if len(made) == AT_ONCE:
                yield made.popleft().result()
        while made:
            yield made.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
