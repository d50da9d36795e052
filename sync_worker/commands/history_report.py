"""`sync-worker history`: a contact's or an interview's versions, newest first (SPEC section 12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sync_worker.errors import ConfigError
from sync_worker.store.history import Version
from sync_worker.store.state import State

SHOWN_CHARS = 200  # a value longer than this is cut on the terminal (--json has it whole)


def versions(state_path: Path, email: str | None, interview_id: int | None) -> list[Version]:
    if not state_path.is_file():
        raise ConfigError(f"state {state_path} not found: give the --state your runs used")
    state = State.read_only(state_path)
    try:
        if email is not None:
            return state.versions_of_contact(email)
        assert interview_id is not None
        return state.versions_of_interview(interview_id)
    finally:
        state.close()


def as_json(found: list[Version]) -> str:
    """One JSON document: the versions, values as JSON (not as text holding JSON)."""
    return json.dumps([_record(v) for v in found], ensure_ascii=False, indent=2)


def _record(version: Version) -> dict[str, Any]:
    record = version._asdict()
    before, sent = record.pop("before_json"), record.pop("sent_json")
    record["before"] = json.loads(before) if before is not None else None
    record["before_known"] = before is not None
    record["sent"] = json.loads(sent)
    return record


def as_text(found: list[Version], subject: str) -> str:
    if not found:
        return f"no history for {subject} (nothing a run changed is recorded for it)"
    lines = [f"history of {subject}: {len(found)} versions, newest first"]
    for v in found:
        where = f"contact {v.key}" if v.level == "contact" else f"interview {v.key}"
        lines.append(
            f"{v.at}  run {v.run_id}  {v.field} of {where} (via interview {v.interview_id})"
        )
        lines.append(f"    sent:   {_shown(v.sent_json)}")
        before = _shown(v.before_json) if v.before_json is not None else "unknown"
        lines.append(f"    before: {before}  [{v.source.replace('_', ' ')}]")
    return "\n".join(lines)


def _shown(value_json: str) -> str:
    text = json.dumps(json.loads(value_json), ensure_ascii=False)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."
