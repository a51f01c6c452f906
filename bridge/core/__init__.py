"""The core every other part builds on: the request model, the one key schema, the ledger,
leases, the lifecycle (states, transitions, error classes), breakers, budgets, metrics.

May import only ``bridge.errors``, ``bridge.settings``, ``bridge.logs`` and
``bridge.runpod`` (enforced by the import contracts in pyproject.toml).
"""
