"""Recording: the ledger, the state updates as answers arrive, the summary and metrics."""
