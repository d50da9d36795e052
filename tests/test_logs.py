from __future__ import annotations

import io
import json
from pathlib import Path

import structlog
from structlog.testing import capture_logs

from sync_worker.commands import planning
from sync_worker.logs import REDACTED, configure, get_logger, redact_secrets, register_secret
from sync_worker.settings.config import Settings
from sync_worker.store.state import State


def test_json_lines_when_not_a_terminal_with_context_bound() -> None:
    stream = io.StringIO()
    configure("auto", stream)
    structlog.contextvars.bind_contextvars(run_id="r-123")
    try:
        get_logger().info("run_started", rows=3)
    finally:
        structlog.contextvars.clear_contextvars()
    event = json.loads(stream.getvalue())
    assert (event["event"], event["run_id"], event["rows"], event["level"]) == (
        "run_started",
        "r-123",
        3,
        "info",
    )


def test_console_lines_when_asked() -> None:
    stream = io.StringIO()
    configure("console", stream)
    get_logger().warning("retry", interview_id=4)
    assert "retry" in stream.getvalue() and not stream.getvalue().startswith("{")


def test_secret_scrubbed_from_every_field_and_traceback() -> None:
    register_secret("sk-processor-secret-9")
    stream = io.StringIO()
    configure("json", stream)
    try:
        raise RuntimeError("header was Bearer sk-processor-secret-9")
    except RuntimeError:
        get_logger().exception("boom", detail={"k": ["sk-processor-secret-9"]})
    text = stream.getvalue()
    assert "sk-processor-secret-9" not in text
    assert text.count(REDACTED) >= 3
    assert redact_secrets(None, "info", {"a": "x sk-processor-secret-9"}) == {"a": f"x {REDACTED}"}


def test_invalid_rows_counted_not_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("interview_id,objective\n" + "".join(f"bad{i},x\n" for i in range(12)))
    options = planning.RunOptions(inputs=(str(path),))
    batch = planning.read_inputs(Settings(), options.inputs)
    with capture_logs() as events:
        planning.plan_with_notes(Settings(), options, batch, State(None))  # as a run plans
    one_by_one = [e for e in events if e["event"] == "invalid_row"]
    assert len(one_by_one) == planning.INVALID_LOGGED
    [counted] = [e for e in events if e["event"] == "invalid_rows"]
    assert counted["count"] == 12 and counted["log_level"] == "warning"
    assert "see the ledger" in counted["message"]
    with capture_logs() as events:
        planning.validate(Settings(), options)  # lists every one itself: none logged
    assert not [e for e in events if e["event"] in ("invalid_row", "invalid_rows")]
