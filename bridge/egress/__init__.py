"""Where results go: final replies and stream chunks (through the ledger), refusals, the
dead-letter stream, the Celery result backend and the continuation of Celery canvases.

May import ``bridge.core`` (and ``bridge.errors``, ``bridge.settings``), never the doors
or the worker.
"""
