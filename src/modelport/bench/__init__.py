"""Latency and throughput, measured interleaved across models (``run.bench``)."""
