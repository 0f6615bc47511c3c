"""py-spy on our services during a loaded phase, summarised as small text files: where each
service's CPU goes, by function (self and inclusive) and by area (driver, broker client, JSON,
validation, HTTP, event loop, our code).

`python -m bench --only relayflow --profile bench/profiles` runs it; py-spy must be installed
(`pip install py-spy`). Raw stacks are deleted once summarised (they are large)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path
from types import TracebackType

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")

# First match wins: (area, substring of the file path).
AREAS: tuple[tuple[str, str], ...] = (
    ("asyncpg (PostgreSQL driver)", "asyncpg/"),
    ("aio-pika / aiormq / pamqp (AMQP client)", "aio_pika/"),
    ("aio-pika / aiormq / pamqp (AMQP client)", "aiormq/"),
    ("aio-pika / aiormq / pamqp (AMQP client)", "pamqp/"),
    ("pydantic (validation, models)", "pydantic"),
    ("JSON (orjson / json)", "json/"),
    ("HTTP server (uvicorn, starlette, sse-starlette, h11, httptools)", "uvicorn/"),
    ("HTTP server (uvicorn, starlette, sse-starlette, h11, httptools)", "starlette/"),
    ("HTTP server (uvicorn, starlette, sse-starlette, h11, httptools)", "sse_starlette/"),
    ("HTTP server (uvicorn, starlette, sse-starlette, h11, httptools)", "h11/"),
    ("HTTP server (uvicorn, starlette, sse-starlette, h11, httptools)", "httptools/"),
    ("logging", "logging/"),
    ("relayflow shared code", "relayflow/"),
    ("service code", "services/"),
    ("bench step bodies", "bench/"),
    ("asyncio event loop, sockets, selectors", "asyncio/"),
    ("asyncio event loop, sockets, selectors", "selectors.py"),
    ("asyncio event loop, sockets, selectors", "uvloop"),
)


def area_of(file: str) -> str:
    for area, needle in AREAS:
        if needle in file:
            return area
    return "other (stdlib, interpreter)"


def summarise(raw: str, title: str, top: int = 30) -> str:
    """A text summary of py-spy's raw (collapsed) stacks: `frame;frame;leaf count` lines."""
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas_self: Counter[str] = Counter()
    areas_incl: Counter[str] = Counter()
    # For each leaf function: the nearest caller outside the event loop and the stdlib, i.e.
    # which library or code of ours asked for that work (who writes to sockets, who waits).
    callers: dict[str, Counter[str]] = {}
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        parsed = []
        for frame in frames:
            match = _FRAME.match(frame.strip())
            func, file = (match["func"], match["file"]) if match else (frame.strip(), "?")
            parsed.append((f"{func} ({_short(file)})", file))
        if not parsed:
            continue
        own[parsed[-1][0]] += count
        origin = next(
            (name for name, file in reversed(parsed[:-1]) if not _generic(area_of(file))),
            "(event loop only)",
        )
        callers.setdefault(parsed[-1][0], Counter())[origin] += count
        areas_self[area_of(parsed[-1][1])] += count
        for name in {name for name, _ in parsed}:
            inclusive[name] += count
        for area in {area_of(file) for _, file in parsed}:
            areas_incl[area] += count
    if not total:
        return f"# {title}\n\nno samples (was the process busy?)\n"

    def pct(value: int) -> str:
        return f"{100 * value / total:5.1f}%"

    lines = [f"# {title}", "", f"{total} samples of CPU-active stacks (py-spy, idle excluded)", ""]
    lines.append("## By area: self time (leaf frame), inclusive (anywhere on the stack)")
    for area, count in areas_self.most_common():
        lines.append(f"{pct(count)} self  {pct(areas_incl[area])} incl  {area}")
    lines += ["", f"## Top {top} functions by self time"]
    lines += [f"{pct(count)}  {name}" for name, count in own.most_common(top)]
    lines += ["", "## The 5 hottest leaf functions, and who asked (nearest non-loop caller)"]
    for name, count in own.most_common(5):
        lines.append(f"{pct(count)}  {name}")
        lines += [f"    {pct(c)}  {caller}" for caller, c in callers[name].most_common(6)]
    lines += ["", f"## Top {top} functions by inclusive time"]
    lines += [f"{pct(count)}  {name}" for name, count in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def _generic(area: str) -> bool:
    return area.startswith(("asyncio", "other"))


def _short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


class Profiler:
    """`async with Profiler({role: pid}, out_dir):` samples every process while the block runs."""

    def __init__(self, pids: dict[str, int], out_dir: Path, rate: int = 200) -> None:
        self.pids = pids
        self.out_dir = out_dir
        self.rate = rate
        self.spies: dict[str, asyncio.subprocess.Process] = {}

    async def __aenter__(self) -> Profiler:
        beside = Path(sys.executable).with_name("py-spy")  # the venv's, when not on PATH
        spy = shutil.which("py-spy") or (str(beside) if beside.exists() else None)
        if spy is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for role, pid in self.pids.items():
            self.spies[role] = await asyncio.create_subprocess_exec(
                spy, "record", "--pid", str(pid), "--format", "raw", "--rate", str(self.rate),
                "--nonblocking", "-o", str(self.out_dir / f"{role}.raw"),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        await asyncio.sleep(1.0)  # py-spy attaches
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for spy in self.spies.values():
            with contextlib.suppress(ProcessLookupError):
                spy.send_signal(signal.SIGINT)
        for spy in self.spies.values():
            try:
                await asyncio.wait_for(spy.wait(), 30)
            except TimeoutError:
                spy.kill()
                await spy.wait()
        for role in self.spies:
            raw_path = self.out_dir / f"{role}.raw"
            if raw_path.exists():
                text = raw_path.read_text(errors="replace")
                summary = summarise(text, f"{role}: CPU profile under the loaded phase")
                (self.out_dir / f"{role}.txt").write_text(summary)
                raw_path.unlink()
