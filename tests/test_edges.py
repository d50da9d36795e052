"""The corpus of edges: every odd input, path, server and signal a demanding user tried.

Each case drives the real CLI the way the user did and asserts the exit code, one clear line on
stderr (never a traceback), and, where a ledger is due, exactly one ledger line per input row.
Keep adding to it: a new edge found is a new case here, in the section it belongs to.
"""

from __future__ import annotations

from pathlib import Path

from conftest import Result, read_ledger


def assert_one_line(result: Result, code: int, *words: str) -> str:
    """Exit `code`, no traceback, and exactly one non-empty line on stderr holding `words`."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.code == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def assert_no_traceback(result: Result, code: int) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.code == code, result.stderr


def assert_ledger_rows(path: Path, rows: int) -> list[dict[str, str]]:
    """One ledger line per input row: source rows 1..rows, each once."""
    ledger = read_ledger(path)
    assert sorted(int(line["source_row"]) for line in ledger) == list(range(1, rows + 1))
    return ledger


# -- inputs ------------------------------------------------------------------------------------

# -- config, key and numbers -------------------------------------------------------------------

# -- paths, state, ledger and report -----------------------------------------------------------

# -- the server: outages, garbage, stops -------------------------------------------------------
