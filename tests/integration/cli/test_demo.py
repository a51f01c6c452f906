"""`bridge demo` runs its whole tour on embedded defaults, also when port 8000 is taken."""

from __future__ import annotations

import io
import socket

from rich.console import Console

from bridge.demo import run_demo


def test_demo_tour_completes_even_when_port_is_taken() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        out = io.StringIO()
        run_demo(Console(file=out, width=120), port=taken)
    text = out.getvalue()
    assert f"127.0.0.1:{taken}/" not in text
    for step in ("1. A plain job", "3. A streamed job", "6. Endpoint health", "tour complete"):
        assert step in text
    assert "chunk {'i': 5}" in text
    assert "raised JobCancelled" in text
    assert "CUDA out of memory (simulated)" in text
