"""Where requests come from: the envelope, admission (one set of rules for both doors),
the JSON door (a Redis stream consumer) and the webhook receiver.

May import ``bridge.core`` (and ``bridge.errors``, ``bridge.settings``), never the
worker or egress.
"""
