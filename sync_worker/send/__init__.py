"""Sending: one session, paced, retried, with the pool sized to the latency."""
