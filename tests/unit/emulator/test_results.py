"""The platform's reading of a worker's report (issue 16 items 1 and 3): what a job-done
body makes of the job, and how a stream chunk over 1 MB is split."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.emulator.results import Verdict, encoded_size, judge, split_chunk

LIMIT = 20 * 1024 * 1024


def read(body: Any) -> Verdict:
    return judge(body, encoded_size(body), LIMIT)


@pytest.mark.parametrize(
    ("body", "status", "output", "error"),
    [
        pytest.param({"output": {"a": 1}}, "COMPLETED", {"a": 1}, None, id="output"),
        pytest.param({}, "COMPLETED", None, None, id="nothing"),
        pytest.param({"output": None}, "COMPLETED", None, None, id="null-output"),
        pytest.param({"error": "boom"}, "FAILED", None, "boom", id="error"),
        pytest.param({"output": 1, "error": "e"}, "FAILED", 1, "e", id="error-keeps-output"),
        pytest.param({"output": 1, "error": ""}, "COMPLETED", 1, None, id="empty-error"),
        pytest.param({"output": 1, "error": None}, "COMPLETED", 1, None, id="null-error"),
    ],
)
def test_a_report_ends_the_job(body: Any, status: str, output: Any, error: str | None) -> None:
    verdict = read(body)
    assert (verdict.status, verdict.output, verdict.error, verdict.refused) == (
        status,
        output,
        error,
        None,
    )
    assert verdict.has_output == ("output" in body)


def test_a_dict_error_is_refused_and_the_job_completes_without_output() -> None:
    """runpod-python issue #299: a handler's dict ``error`` ends COMPLETED, no output."""
    verdict = read({"output": {"k": 1}, "error": {"code": 7}})
    assert (verdict.status, verdict.has_output, verdict.error) == ("COMPLETED", False, None)
    assert verdict.refused == "'error' must be a string"


def test_an_oversized_result_is_refused_and_the_job_completes_without_output() -> None:
    """runpod-python issue #309: the job-done POST gets 400; the job shows COMPLETED."""
    verdict = judge({"output": "x"}, LIMIT + 1, LIMIT)
    assert (verdict.status, verdict.has_output) == ("COMPLETED", False)
    assert verdict.refused is not None
    assert f"{LIMIT + 1} bytes" in verdict.refused
    assert judge({"output": "x"}, LIMIT, LIMIT).refused is None


def test_progress_updates_and_refused_ones() -> None:
    assert read({"status": "IN_PROGRESS", "output": "4/10"}) == Verdict(
        "IN_PROGRESS", output="4/10", has_output=True
    )
    refused = judge({"status": "IN_PROGRESS", "output": "x"}, LIMIT + 1, LIMIT)
    assert (refused.status, refused.refused is not None) == ("IN_PROGRESS", True)


def test_stop_pod_and_a_body_that_is_not_an_object() -> None:
    assert read({"output": 1, "stopPod": True}).stop_pod
    assert read([1, 2]).refused == "job-done body must be a JSON object"


# -- stream chunks over the limit are split, not dropped ----------------------------------------


def test_a_small_chunk_is_kept_whole() -> None:
    assert split_chunk({"i": 1}, 1024) == [{"i": 1}]


@pytest.mark.parametrize("text", ["a" * 5000, "é" * 3000, '"\\\n' * 1500, "日本語" * 900])
def test_a_long_string_is_cut_into_pieces_that_fit_and_join_back(text: str) -> None:
    pieces = split_chunk(text, 1000)
    assert len(pieces) > 1
    assert all(encoded_size(p) <= 1000 for p in pieces)
    assert "".join(pieces) == text


def test_another_value_is_cut_as_its_json_text() -> None:
    value = {"image": "A" * 3000, "seed": 4}
    pieces = split_chunk(value, 1000)
    assert all(isinstance(p, str) and encoded_size(p) <= 1000 for p in pieces)
    assert json.loads("".join(pieces)) == value


def test_a_megabyte_limit_splits_a_two_and_a_half_megabyte_chunk_in_three() -> None:
    pieces = split_chunk("z" * (5 * 1024 * 1024 // 2), 1024 * 1024)
    assert len(pieces) == 3
    assert all(encoded_size(p) <= 1024 * 1024 for p in pieces)
