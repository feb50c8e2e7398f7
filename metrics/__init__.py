"""Prometheus metrics: the registry each app owns (metrics/registry.py).

Imports nothing of the project's: every layer above may count into it.
"""
