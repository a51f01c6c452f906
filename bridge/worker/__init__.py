"""The bridge worker: Celery composition root, thin tasks, tracker, ledger, beat.

May import everything else in bridge; nothing outside bridge.worker and bridge.cli
imports it (the client library and the emulator stay Celery-free).
"""
