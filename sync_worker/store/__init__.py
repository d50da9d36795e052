"""The state file's one owner: what was sent, the runs, the lock, the history of values.

Only this package speaks SQLite: the other stages read and write the file through `State`'s
typed methods, and never see a connection or a statement (pyproject.toml's import contract and
tests/test_state.py hold them to it)."""
