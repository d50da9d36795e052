"""`python -m sync_worker`, and the `sync-worker` command (`entry`)."""

from __future__ import annotations

import sys

INTERRUPTED = 130  # ExitCode.SIGINT, written out: nothing is imported before the guard below


def entry() -> None:
    """A Ctrl-C while the command's modules still load (its first ~50 ms) exits 130, as it does
    later, not with a traceback."""
    try:
        from sync_worker.cli import main
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
    main()


if __name__ == "__main__":
    entry()
