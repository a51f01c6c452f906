"""Fault injection for one endpoint's queue API: seeded dice and deterministic failures.

Each request to a queue-API route gets its fate from :meth:`FaultDice.roll` once, on
arrival, before anything awaits: the n-th request an endpoint receives after its faults
were set gets the n-th fate of the sequence. One draw is taken per random fault that is
switched on, always in the same order, so a given seed and configuration give the same
sequence whatever the outcome of each request. ``fail_ops`` takes no draw: every request
of a named operation fails with its status.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from http import HTTPStatus

from bridge.emulator.settings import FaultConfig

KINDS = ("dropped", "rate_limited", "error", "dropped_after", "fail_op")
"""The kinds of injected fault, as ``/_emulator/stats`` counts them in ``faults_by_kind``."""

_EARLY = ("dropped", "rate_limited", "error")  # answered before the request is processed


@dataclass(frozen=True)
class Fate:
    """What happens to one request: ``early`` is the fault answered instead of processing
    it, ``drop_after`` drops the connection once it has been processed, ``status`` is the
    HTTP status of a ``fail_op``."""

    early: str | None = None
    drop_after: bool = False
    status: int = 0


UNHARMED = Fate()


def seed_for(config: FaultConfig, server_seed: int | None, endpoint_id: str) -> int | str | None:
    """The seed of an endpoint's sequence: its own, else one derived from the server's
    (each endpoint a different sequence), else None (random)."""
    if config.seed is not None:
        return config.seed
    if server_seed is not None:
        return f"{server_seed}:{endpoint_id}"  # str seeds hash the same in every process
    return None


class FaultDice:
    """The fault sequence of one endpoint under one :class:`FaultConfig`."""

    def __init__(self, config: FaultConfig, seed: int | str | None) -> None:
        self.config = config
        self._rng = random.Random(seed)

    def roll(self, operation: str) -> Fate:
        """The fate of the next request, an ``operation`` of the queue API."""
        config = self.config
        status = config.fail_ops.get(operation)
        if status is not None:
            return Fate(early="fail_op", status=status)
        rates = (
            ("dropped", config.drop_rate),
            ("rate_limited", config.rate_limit_rate),
            ("error", config.error_rate),
            ("dropped_after", config.drop_after_rate),
        )
        hits = {kind for kind, rate in rates if rate and self._rng.random() < rate}
        early = next((kind for kind in _EARLY if kind in hits), None)
        return Fate(early=early, drop_after=early is None and "dropped_after" in hits)


def fail_op_message(status: int, operation: str, endpoint_id: str, job_id: str | None) -> str:
    """The ``error`` text of a ``fail_ops`` reply, worded like the emulator's real ones."""
    if status == 401:
        text = "invalid API key"
    elif status == 403:
        text = f"this API key may not use endpoint {endpoint_id!r}"
    elif status == 404 and job_id is not None:
        text = f"job {job_id!r} not found on endpoint {endpoint_id!r}"
    elif status == 404:
        text = f"endpoint {endpoint_id!r} not found"
    else:
        text = HTTPStatus(status).phrase
    return f"{text} (injected fault: every {operation} answers {status})"
