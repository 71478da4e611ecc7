"""Benchmarks: scripts run by hand (`.venv/bin/python -m ops.bench.<name>`), never by pytest."""
