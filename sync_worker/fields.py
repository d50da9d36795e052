"""The API's fields: one table that config, reader, planner, validation and sandbox all read.

A canonical input column either names the request (the interview id, the contact it belongs to)
or carries a value sent in the PATCH body. Each sent field belongs to the contact (shared by every
interview of that contact: the API writes it on the contact) or to the interview itself, and is
sent as text or as a context (text or a JSON object, merged with the notes the contact has).
Adding a field the API grows is one line in FIELDS (and its tests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class Level(Enum):
    CONTACT = "contact"  # the API writes it on the contact, shared by its interviews
    INTERVIEW = "interview"  # the API writes it on the interview


class Kind(Enum):
    ID = "id"  # the interview id: the request's URL
    CONTACT_KEY = "contact_key"  # says which rows are one contact; never sent
    TEXT = "text"  # sent as a JSON string
    CONTEXT = "context"  # text or a JSON object; `context.<key>` columns join it; merged


@dataclass(frozen=True, slots=True)
class Field:
    column: str  # canonical input column, and the key in the PATCH body when sent
    level: Level
    kind: Kind

    @property
    def sent(self) -> bool:
        return self.kind in (Kind.TEXT, Kind.CONTEXT)


FIELDS = (
    Field("interview_id", Level.INTERVIEW, Kind.ID),
    Field("contact_name", Level.CONTACT, Kind.TEXT),
    Field("objective", Level.INTERVIEW, Kind.TEXT),
    Field("contact_context", Level.CONTACT, Kind.CONTEXT),
    Field("contact_email", Level.CONTACT, Kind.CONTACT_KEY),
)

CANONICAL_COLUMNS = tuple(f.column for f in FIELDS)
ID = next(f.column for f in FIELDS if f.kind is Kind.ID)
CONTACT_KEY = next(f.column for f in FIELDS if f.kind is Kind.CONTACT_KEY)
CONTEXT = next(f.column for f in FIELDS if f.kind is Kind.CONTEXT)
TEXT_FIELDS = tuple(f.column for f in FIELDS if f.kind is Kind.TEXT)  # sent as strings
SENT_FIELDS = tuple(f.column for f in FIELDS if f.sent)  # what a body may hold
CONTACT_FIELDS = tuple(f.column for f in FIELDS if f.sent and f.level is Level.CONTACT)
INTERVIEW_FIELDS = tuple(f.column for f in FIELDS if f.sent and f.level is Level.INTERVIEW)
ID_DIGITS = "[0-9]{1,19}"  # an interview id as written: whole, positive, at most 64 bits ...
MAX_ID = 2**63 - 1  # ... and no larger than this (plan/cells applies the rule to whole columns)
CONTEXT_PREFIX = "context."  # `context.<key>` columns: one key each of the context object
NOTES_KEY = "notes"  # where plain-text context lives inside a context object
NO_EMAIL = "interview:"  # the key of a contact without an email: interview:<id>
RESOLVED = "contact:"  # the key of a contact the API named: contact:<contact_id>


def email_key(email: str) -> str:
    """An email as a contact's key: lower case as Python's str.lower makes it (the column road,
    plan/contacts.lower, gives the same cell for cell; Arrow's own lowering differs)."""
    return email.lower()


def email_of(key: str) -> str:
    """The email a contact key holds, or "" for a key that is none (`interview:<id>`, the API's
    `contact:<id>`): what a ledger's contact_email shows."""
    return "" if key.startswith((NO_EMAIL, RESOLVED)) else key


def contact_key(email: str, interview_id: int | None) -> str:
    """Which contact a row belongs to: its email, as `email_key` made it, or for a row without
    one `interview:<id>` (each such interview is a contact of its own). Runs, the state, the
    history and notes files all key contacts by this text."""
    return email or f"{NO_EMAIL}{interview_id}"


def resolved_key(contact_id: int) -> str:
    """A contact as the API names it (`GET /interviews/{id}` gives its `contact_id`)."""
    return f"{RESOLVED}{contact_id}"


def is_email_key(key: str) -> bool:
    """A contact key made from an email (not `interview:<id>` nor `contact:<id>`)."""
    return not key.startswith((NO_EMAIL, RESOLVED))


def interview_id(text: str) -> int | None:
    """One cell under the id rule: the id, or None when it breaks it (`4821.0`, `0`, `+2`)."""
    if re.fullmatch(ID_DIGITS, text) is None or not 0 < int(text) <= MAX_ID:
        return None
    return int(text)


def nothing_to_update() -> str:
    """The message for a row whose sent fields are all empty."""
    return f"nothing to update: {', '.join(SENT_FIELDS)} and {CONTEXT_PREFIX}* are all empty"
