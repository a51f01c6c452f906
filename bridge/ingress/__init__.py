"""Where requests come from: the envelope, the JSON door (Redis stream consumer).

May import bridge.errors, bridge.settings and bridge.worker's ledger interfaces.
"""
