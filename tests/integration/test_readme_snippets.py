"""Every shell and Python snippet of README.md and docs/*.md runs, as a reader would run
it, against a real emulator, Redis, bridge worker and beat (started here, as ``bridge
demo`` does).

A block preceded by ``<!-- not run: why -->`` is not collected at all (container
commands, processes that run until stopped, ``make test`` itself), so that a real skip
would stand out; every other ``sh``/``python`` block must exit 0. Only what a user
changes is changed: the emulator's address (it listens on a free port), the Redis the
commands use, names that would collide with a concurrent run (the request stream, reply
lists), the client examples' placeholders (``your-api-key``, ``your-endpoint-id``,
``your-template-id``: docs/client.md says how to fill them in for the emulator) and their
5-10 s monitoring sleeps.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.devstack import Stack, running_stack
from bridge.emulator.settings import EmulatorSettings, EndpointConfig, TemplateConfig
from bridge.emulator.testing import EmulatorHandle, running_emulator

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"sh", "bash", "shell", "python"}
FENCE = re.compile(r"^```(?P<lang>\w*)[^\n]*\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)
NOT_RUN = re.compile(r"<!-- not run: (?P<why>.+?) -->\n$")
SHELL_PRELUDE = """set -euo pipefail
redis-cli() { command redis-cli -u "$BRIDGE_REDIS_URL" "$@"; }
"""

# What a block's output must show, keyed by a piece of the block; each must match a block.
EXPECT = {
    "BLPOP replies:req-1": r'"status":"COMPLETED","output":\{"prompt":"hi"\}',
    'app.send_task("bridge.run"': r"\{'prompt': 'hi'\}[\s\S]*cancelled:[\s\S]*\[\{'n': 1\}\]",
    "producer.send_task(": r"\{'prompt': 'hi'\}\nJobFailed\nJobCancelled\n",
    "/v2/echo/runsync": r'"status":\s*"COMPLETED"',
    'run_sync({"prompt": "A beautiful sunset"}': r"'image_url': 'https://images\.example/",
    "runpod.create_endpoint(": r"Created endpoint: \S+\n[\s\S]*image-generation-endpoint - ",
    "Generated image URL": r"Generated image URL: https://[\s\S]*Job status: COMPLETED",
    "process_multiple_jobs": r"Job 3 completed: \{'image_url'",
    "Streaming output": r"Once upon a time, Generate a long story lived\.[\s\S]*Stream completed",
    "A complex 3D render": r"Job completed successfully: \{'image_url'",
    "bridge health ": r"│ echo",
    "bridge submit echo": r"COMPLETED[\s\S]*chunk 0",
    "bridge dlq list": r"dead letter\(s\)",
}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    not_run: str | None

    @property
    def id(self) -> str:
        return f"{self.page.name}:line{self.line}-{self.lang}"

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)} line {self.line}"


def page_blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        if match["lang"] not in RUNNABLE:
            continue
        marker = NOT_RUN.search(text[: match.start()][-300:])
        line = text.count("\n", 0, match.start()) + 1
        why = marker["why"] if marker else None
        blocks.append(Block(page, line, match["lang"], match["code"], why))
    return blocks


BLOCKS = [block for page in PAGES for block in page_blocks(page)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_not_run_marker_stands_right_before_a_block(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    markers = len(re.findall(r"^<!-- not run:", text, re.M))
    assert markers == sum(1 for b in page_blocks(page) if b.not_run)


def test_most_blocks_run() -> None:
    """A not-run block is an exception with a reason, not a way around a failing one."""
    running = sum(1 for b in BLOCKS if not b.not_run)
    not_run = sum(1 for b in BLOCKS if b.not_run)
    assert running >= 14
    assert not_run <= 13, [b.where for b in BLOCKS if b.not_run]


def test_every_expectation_belongs_to_a_block_that_runs() -> None:
    for piece in EXPECT:
        assert any(piece in b.code for b in BLOCKS if not b.not_run), f"no block has {piece!r}"


@dataclass
class Setting:
    emulator: EmulatorHandle
    stack: Stack
    env: dict[str, str]


@pytest.fixture(scope="module")
def setting(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setting]:
    """The emulator (its built-in endpoints plus ``sdxl`` and ``story``, the stand-ins for
    the client examples' models), a worker and beat, and a reader's environment."""
    defaults = EmulatorSettings()
    fast = {"workersMax": 10, "scalerType": "REQUEST_COUNT", "scalerValue": 1}
    templates = [*defaults.templates, TemplateConfig(id="sdxl", imageName="readme_handlers:image"),
                 TemplateConfig(id="story", imageName="readme_handlers:story")]  # fmt: skip
    endpoints = [*defaults.endpoints, EndpointConfig(id="sdxl", templateId="sdxl", **fast),
                 EndpointConfig(id="story", templateId="story", **fast)]  # fmt: skip
    with (
        running_emulator(templates=templates, endpoints=endpoints, webhook_attempts=1) as emu,
        running_stack(emu.url, redis_url=redis_url, health_interval_s=1.0) as stack,
    ):
        env = dict(stack.env)
        env.update(
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            RUNPOD_ENDPOINT_BASE_URL=emu.base_url,
            RUNPOD_API_BASE_URL=emu.url,
            RUNPOD_API_KEY=emu.api_key,
            HOME=str(tmp_path_factory.mktemp("home")),
        )
        yield Setting(emu, stack, env)


def as_a_reader_runs_it(block: Block, setting: Setting) -> str:
    code = block.code
    host_port = setting.emulator.url.removeprefix("http://")
    code = code.replace("127.0.0.1:8000", host_port)
    code = code.replace("bridge:requests", setting.stack.settings.requests_stream)
    code = code.replace("replies:", f"{setting.stack.tag}-replies:")
    code = code.replace('queue="bridge"', f'queue="{setting.stack.settings.default_queue}"')
    if block.lang == "python":
        endpoint = "story" if ".stream()" in code else "sdxl"
        code = code.replace("your-api-key", setting.emulator.api_key)
        code = code.replace("your-endpoint-id", endpoint).replace("your-template-id", "sdxl")
        code = code.replace("https://your-app.com/", f"{setting.emulator.url}/nowhere/")
        code = re.sub(r"time\.sleep\((5|10)\)", "time.sleep(0.05)", code)
    return code


def run_in_own_group(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a block in a process group of its own, and kill the whole group when it ends
    or times out: a block that leaves a server behind must not outlive its test."""
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(argv[:2])}: still running after 90 s\n{stdout}{stderr}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("block", [b for b in BLOCKS if not b.not_run], ids=lambda b: b.id)
def test_readme_block_runs(block: Block, setting: Setting) -> None:
    code = as_a_reader_runs_it(block, setting)
    if block.lang == "python":
        argv = [sys.executable, "-c", code]
    else:
        argv = ["bash", "-c", SHELL_PRELUDE + code]
    result = run_in_own_group(argv, setting.env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{block.where} failed:\n{code}\n---\n{output}"
    for piece, pattern in EXPECT.items():
        if piece in block.code:
            assert re.search(pattern, output), f"{block.where}: {pattern!r} not in:\n{output}"
