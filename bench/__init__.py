"""Benchmarks: capture, sync, agent process and ledger; `bench/run.py` runs them all."""
