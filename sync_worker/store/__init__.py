"""The state file's one owner: what was sent, the runs, the lock, the history of values."""
