"""What a plan asks of the API, in one line: rows, requests, contacts, contacts whose notes are
unknown, and how long the requests take at the limit. `plan` and `validate` end with it and a
run starts with it; the time is the run's floor, since the API's limit is what paces it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sync_worker.fields import CONTACT_KEY
from sync_worker.plan.contacts import keyed_by_id, lower
from sync_worker.plan.model import Plan
from sync_worker.read.reader import Batch


@dataclass(frozen=True)
class Estimate:
    rows: int  # input rows
    requests: int  # requests to send
    contacts: int  # the contacts those requests write to
    unknown_notes: int  # of them, contacts whose notes a merged run does not know (else 0)
    per_minute: float  # the limit, per minute

    @property
    def minutes(self) -> float:
        return self.requests / self.per_minute

    def fields(self) -> dict[str, Any]:
        """The figures as a log event's fields."""
        return {
            "rows": self.rows,
            "requests": self.requests,
            "contacts": self.contacts,
            "contacts_notes_unknown": self.unknown_notes,
            "requests_per_minute": round(self.per_minute, 2),
            "estimated_minutes": round(self.minutes, 2),
        }

    def took(self) -> str:
        """`about 5m00s at 300 requests a minute`."""
        return f"about {duration(self.minutes)} at {self.per_minute:g} requests a minute"

    def line(self) -> str:
        """`200 rows: 150 requests to 90 contacts (3 with notes unknown), about 0m30s at 300
        requests a minute`."""
        unknown = f" ({self.unknown_notes} with notes unknown)" if self.unknown_notes else ""
        return (
            f"{self.rows} rows: {self.requests} requests to {self.contacts} contacts{unknown}, "
            f"{self.took()}"
        )


def estimate(batch: Batch, plan: Plan, limit: int, period_s: float) -> Estimate:
    return Estimate(
        rows=len(batch),
        requests=len(plan.table),
        contacts=count_contacts(batch, plan),
        unknown_notes=plan.contacts_no_existing,
        per_minute=limit * 60.0 / period_s,
    )


def count_contacts(batch: Batch, plan: Plan) -> int:
    """Distinct contacts of the requests to send. `plan` leaves the contact of the requests it
    builds by columns unset (it prints none); those are single rows, whose contact is their
    own e-mail (lower case, as contacts.py keys them) or their interview."""
    table = plan.table
    if not len(table):
        return 0
    if plan.contacts_sent_to is not None:  # counted when the requests were trimmed
        return plan.contacts_sent_to
    contacts = table.contact
    unset = np.asarray(pc.is_null(contacts).to_numpy(zero_copy_only=False), dtype=bool)
    if unset.any():
        column = pa.array(batch.frame[CONTACT_KEY], pa.string())
        emails = pc.utf8_trim_whitespace(
            pc.fill_null(column.take(pa.array(table.position[unset])), "")
        )
        emails = lower(pa.chunked_array([emails]))
        keys = pc.if_else(pc.not_equal(emails, ""), emails, keyed_by_id(table.interview_id[unset]))
        known = contacts.filter(pa.array(~unset))
        contacts = pa.chunked_array([*known.chunks, *keys.chunks], pa.string())
    return int(pc.count_distinct(contacts).as_py())


def duration(minutes: float) -> str:
    """`8h20m`, or `4m05s` under an hour."""
    seconds = math.ceil(minutes * 60)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
