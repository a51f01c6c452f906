"""Seeded fault dice and deterministic operation failures (no sockets)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bridge.emulator.faults import Fate, FaultDice, fail_op_message, seed_for
from bridge.emulator.settings import FaultConfig
from bridge.emulator.state import Counters

MIXED = FaultConfig(error_rate=0.2, drop_rate=0.1, rate_limit_rate=0.1, drop_after_rate=0.1)


def fates(config: FaultConfig, seed: int | str | None, n: int = 200) -> list[Fate]:
    dice = FaultDice(config, seed)
    return [dice.roll("status") for _ in range(n)]


def test_a_seed_gives_the_same_sequence_and_another_seed_another() -> None:
    assert fates(MIXED, 7) == fates(MIXED, 7)
    assert fates(MIXED, 7) != fates(MIXED, 8)
    kinds = {f.early for f in fates(MIXED, 7)} | {
        "dropped_after" for f in fates(MIXED, 7) if f.drop_after
    }
    assert kinds == {None, "dropped", "rate_limited", "error", "dropped_after"}


def test_an_unseeded_sequence_differs_between_dice() -> None:
    assert fates(MIXED, None) != fates(MIXED, None)


def test_rates_hold_over_many_requests() -> None:
    hits = sum(f.early == "error" for f in fates(FaultConfig(error_rate=0.3), 1, 10_000))
    assert 2800 < hits < 3200


def test_rate_one_and_rate_zero_are_certain() -> None:
    assert {f.early for f in fates(FaultConfig(error_rate=1.0), None, 50)} == {"error"}
    assert set(fates(FaultConfig(latency_ms=5), None, 50)) == {Fate()}


def test_an_early_fault_is_never_also_dropped_after() -> None:
    config = FaultConfig(error_rate=1.0, drop_after_rate=1.0)
    assert set(fates(config, 1, 20)) == {Fate(early="error")}


def test_fail_ops_answer_their_status_and_take_no_draw() -> None:
    config = FaultConfig(error_rate=0.5, fail_ops={"status": 401, "stream": 404})
    dice = FaultDice(config, 3)
    plain = FaultDice(FaultConfig(error_rate=0.5), 3)
    for _ in range(30):
        assert dice.roll("status") == Fate(early="fail_op", status=401)
        assert dice.roll("stream") == Fate(early="fail_op", status=404)
        assert dice.roll("run") == plain.roll("run")  # the random sequence is untouched


def test_seed_precedence_and_per_endpoint_sequences() -> None:
    assert seed_for(FaultConfig(seed=5), 9, "echo") == 5
    assert seed_for(FaultConfig(), None, "echo") is None
    echo, other = seed_for(FaultConfig(), 9, "echo"), seed_for(FaultConfig(), 9, "other")
    assert echo != other
    assert fates(MIXED, echo) == fates(MIXED, seed_for(FaultConfig(), 9, "echo"))
    assert fates(MIXED, echo) != fates(MIXED, other)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"fail_ops": {"stauts": 401}}, "unknown operation 'stauts'"),
        ({"fail_ops": {"status": 200}}, "not an HTTP error status"),
        ({"fail_ops": {"status": 999}}, "not an HTTP error status"),
        ({"latency_ms": 60_001}, "less than or equal to 60000"),
    ],
)
def test_fault_config_is_validated(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FaultConfig.model_validate(fields)


def test_fail_op_messages_read_like_real_errors() -> None:
    assert fail_op_message(401, "status", "ep", "j1").startswith("invalid API key")
    assert fail_op_message(404, "status", "ep", "j1").startswith("job 'j1' not found")
    assert fail_op_message(404, "health", "ep", None).startswith("endpoint 'ep' not found")
    assert fail_op_message(503, "run", "ep", None).startswith("Service Unavailable")
    assert "injected fault" in fail_op_message(403, "cancel", "ep", "j1")


def test_counters_break_faults_down_by_kind() -> None:
    counters = Counters()
    for kind in ("error", "error", "fail_op"):
        counters.count_fault(kind)
    report = counters.to_dict()
    assert report["faults_injected"] == 3
    assert report["faults_by_kind"] == {
        "dropped": 0,
        "rate_limited": 0,
        "error": 2,
        "dropped_after": 0,
        "fail_op": 1,
    }
