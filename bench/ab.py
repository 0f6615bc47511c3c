"""`python -m bench.ab`: our five-step figures at two git revisions, measured A/B on one machine.

Each revision gets a detached worktree (under the temp dir, removed at the end) and runs its own
`python -m bench --only relayflow --no-scale --fanout 0 --repeat 1` with the same arguments, from
its own directory: its own driver, its own services, a fresh database and namespace per run. The
runs alternate A B A B ... for `--rounds` rounds. Both revisions use this interpreter's venv
when they declare the same dependencies (`dependencies` and the `bench` extra) and this venv
satisfies the runtime ones (the extra is the peers, not run here); otherwise each gets its own
venv in its worktree. The worktree is first on `PYTHONPATH` and is the working directory, and
a `sitecustomize` (on `PYTHONPATH` too, so in every child) records at exit where each process
imported `relayflow`, `services`, `bench`, `apps` and `workflows` from; a run that imported any
of them from outside its worktree, or whose gateway, orchestrator or step service left no
record, is refused. The bench's own code is untouched except that its phase summary also gets
the p95 latency (the revision's own `Phase.latency_ms(95)`).

Per revision: median (min-max over rounds) of throughput at `--concurrency` in flight, p50 and
p95 latency at 1 in flight, p50 under load, machine CPU per workflow and that of our processes,
the broker, the database and the client alone (the machine's minus `other`, which is whatever
else ran), and each service's peak RSS. Then after / before of the medians, the median (min-max)
of the rounds' paired ratios, and the noise: the larger of the two revisions' spread between
rounds ((max - min) / median). A ratio that departs from 1 by less than the noise is within it.

The machine is shared, so each run waits for a quiet machine (at most `--quiet` of all cores
busy over 3 s, for up to `--max-wait` s) and is redone, up to `--retries` times, when the machine
was busy just before or after it or other processes took more than `--max-other` ms of CPU per
workflow in its loaded phase (the last try is kept anyway, marked). The load average (`uptime`) is
printed at the start and the end; the last line is
`AB_JSON {...}`, everything in one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
IMPORTS_ENV = "RELAYFLOW_AB_IMPORTS"
WATCHED = ("relayflow", "services", "bench", "apps", "workflows")
SERVICES = ("services.gateway", "services.orchestrator", "services.steps")
META = "ab-meta.json"
BRIEF = ("throughput", "p50_1", "p95_1", "cpu_per_wf", "cpu_services_per_wf", "cpu_other_per_wf")

# Put in every child process through PYTHONPATH: at exit, where our packages came from.
SITECUSTOMIZE = f'''\
import atexit, json, os, sys

def _relayflow_ab_record():
    path = os.environ.get("{IMPORTS_ENV}")
    if not path:
        return
    files = {{}}
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in {WATCHED!r}:
            where = getattr(module, "__file__", None)
            if where is None:
                where = next(iter(getattr(module, "__path__", [])), None)
            if where:
                files[name] = where
    main = sys.modules.get("__main__")
    record = {{"pid": os.getpid(), "argv": sys.argv, "main": getattr(main, "__file__", None),
              "cwd": os.getcwd(), "files": files}}
    with open(path, "a") as out:
        out.write(json.dumps(record) + "\\n")

atexit.register(_relayflow_ab_record)
'''

# The child's entry point: the revision's own `bench.cli.main`, its Phase summary also with p95.
SHIM = """\
import sys
import bench.measure as measure
_summary = measure.Phase.summary
def _summary_p95(self):
    out = _summary(self)
    out["p95_ms"] = round(self.latency_ms(95), 2)
    return out
measure.Phase.summary = _summary_p95
from bench.cli import main
main(sys.argv[1:])
"""


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    lower_is_better: bool
    read: Callable[[dict[str, Any]], float | None]
    judged: bool = True  # False: shown, but not a figure of ours (the verdict leaves it out)


def _system(result: dict[str, Any], key: str) -> float | None:
    value = result["systems"]["relayflow"].get(key)
    return float(value) if value is not None else None


def _phase(result: dict[str, Any], phase: str, key: str) -> float | None:
    value = result["runs"]["relayflow"][0][phase].get(key)
    return float(value) if value is not None else None


def _cpu(keep: Callable[[str], bool]) -> Callable[[dict[str, Any]], float | None]:
    """CPU ms per workflow of the loaded phase, of the process roles `keep` accepts."""

    def read(result: dict[str, Any]) -> float | None:
        split = result["runs"]["relayflow"][0]["load"].get("cpu_ms_per_wf_by_role")
        if not split:
            return None
        return float(sum(ms for role, ms in split.items() if keep(role)))

    return read


def _service(role: str) -> bool:
    return role == "gateway" or role.startswith(("orchestrator", "steps"))


def _rss(role: str) -> Callable[[dict[str, Any]], float | None]:
    def read(result: dict[str, Any]) -> float | None:
        value = result["memory_mib"]["relayflow"].get(role)
        return float(value) if value is not None else None

    return read


def _metrics(concurrency: int) -> tuple[Metric, ...]:
    c = concurrency
    return (
        Metric("throughput", f"workflows/s at {c} in flight", False,
               lambda r: _system(r, "throughput")),
        Metric("p50_1", "latency p50, 1 in flight (ms)", True, lambda r: _system(r, "p50_1")),
        Metric("p95_1", "latency p95, 1 in flight (ms)", True,
               lambda r: _phase(r, "serial", "p95_ms")),
        Metric("p50_c", f"latency p50, {c} in flight (ms)", True, lambda r: _system(r, "p50_c")),
        Metric("cpu_per_wf", f"machine CPU per workflow, {c} in flight (ms)", True,
               lambda r: _system(r, "cpu_per_wf")),
        Metric("cpu_own_per_wf", "  ours + broker + database + client (ms)", True,
               _cpu(lambda role: role != "other")),
        Metric("cpu_services_per_wf", "  our three services alone (ms)", True, _cpu(_service)),
        Metric("cpu_other_per_wf", "  other processes: interference (ms)", True,
               _cpu(lambda role: role == "other"), judged=False),
        Metric("rss_gateway", "peak RSS gateway (MiB)", True, _rss("gateway")),
        Metric("rss_orchestrator", "peak RSS orchestrator (MiB)", True, _rss("orchestrator1")),
        Metric("rss_steps", "peak RSS step service (MiB)", True, _rss("steps1")),
    )  # fmt: skip


@dataclass
class Revision:
    label: str  # "before" / "after"
    spec: str  # as given
    sha: str
    worktree: Path
    python: str = sys.executable
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.label} {self.sha[:7]}"


@dataclass(frozen=True)
class Options:
    before: str
    after: str
    rounds: int
    bench_args: tuple[str, ...]
    concurrency: int
    work_dir: Path
    keep: bool
    json_out: Path | None
    report: Path | None
    quiet: float
    max_wait: float
    max_other: float
    retries: int


def parse(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--before", default="23fc241", help="revision A (default 23fc241)")
    parser.add_argument("--after", default="HEAD", help="revision B (default HEAD)")
    parser.add_argument("--rounds", type=int, default=4, help="runs of each revision (default 4)")
    parser.add_argument("--n", type=int, default=1000, help="loaded-phase workflows (1000)")
    parser.add_argument("--concurrency", type=int, default=50, help="in flight (default 50)")
    parser.add_argument("--serial-n", type=int, default=300, help="at 1 in flight (default 300)")
    parser.add_argument(
        "--marginal-n", type=int, default=20,
        help="1- and 10-step workflows each, which the bench always runs (20; not reported)",
    )  # fmt: skip
    parser.add_argument("--warmup", type=int, default=50, help="warm-up workflows (default 50)")
    parser.add_argument("--work-dir", type=Path, help="worktrees, logs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the worktrees afterwards")
    parser.add_argument("--json", type=Path, dest="json_out", help="also write AB_JSON here")
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.10,
        help="before and after each run, the machine must be busier than this fraction of all its "
        "cores for no more than this over 3 s (default 0.10); before, wait for it",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=300,
        help="seconds to wait for a quiet machine before running anyway (default 300)",
    )
    parser.add_argument(
        "--max-other",
        type=float,
        default=2.0,
        help="CPU ms per workflow of other processes in the loaded phase above which a run is "
        "interfered with (default 2.0)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="runs of one slot redone when interfered with; the last is kept anyway (default 2)",
    )
    parser.add_argument(
        "--report", type=Path, metavar="WORK_DIR",
        help="measure nothing: the figures of an earlier run from its work dir (whole rounds)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds: at least 2, or there is no spread to compare with")
    for name in ("n", "serial_n", "marginal_n"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: at least 1")
    bench_args = (
        "--only", "relayflow", "--no-scale", "--fanout", "0", "--repeat", "1",
        "--n", str(args.n), "--concurrency", str(args.concurrency),
        "--serial-n", str(args.serial_n), "--marginal-n", str(args.marginal_n),
        "--warmup", str(args.warmup),
    )  # fmt: skip
    return Options(
        before=args.before,
        after=args.after,
        rounds=args.rounds,
        bench_args=bench_args,
        concurrency=args.concurrency,
        work_dir=args.work_dir or Path(tempfile.mkdtemp(prefix="relayflow-ab-")),
        keep=args.keep,
        json_out=args.json_out,
        report=args.report,
        quiet=args.quiet,
        max_wait=args.max_wait,
        max_other=args.max_other,
        retries=args.retries,
    )


def git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def uptime() -> str:
    done = subprocess.run(["uptime"], check=False, capture_output=True, text=True)
    return done.stdout.strip() or Path("/proc/loadavg").read_text().strip()


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_busy(seconds: float = 3.0) -> float:
    """The fraction of all cores that were busy (not idle nor iowait) over `seconds`."""

    def ticks() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        total = sum(fields[:8])
        return total - fields[3] - fields[4], total

    busy0, total0 = ticks()
    time.sleep(seconds)
    busy1, total1 = ticks()
    return (busy1 - busy0) / max(1, total1 - total0)


def wait_quiet(threshold: float, max_wait: float) -> tuple[float, float]:
    """Wait until the machine is quiet, at most `max_wait` s: its last busy fraction, the wait."""
    started = time.monotonic()
    busy = machine_busy()
    while busy > threshold and time.monotonic() - started < max_wait:
        time.sleep(5)
        busy = machine_busy()
    return busy, time.monotonic() - started


def requirements(sha: str) -> tuple[list[str], list[str]]:
    """A revision's declared runtime requirements and its `bench` extra, whitespace removed."""
    project = tomllib.loads(git("show", f"{sha}:pyproject.toml"))["project"]

    def clean(reqs: list[str]) -> list[str]:
        return sorted("".join(req.split()) for req in reqs)

    return clean(project["dependencies"]), clean(project["optional-dependencies"]["bench"])


def unsatisfied(reqs: Sequence[str]) -> list[str]:
    """The requirements this interpreter's environment does not meet."""
    from packaging.requirements import Requirement

    missing = []
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{text} (not installed)")
            continue
        if not req.specifier.contains(version, prereleases=True):
            missing.append(f"{text} (installed {version})")
    return missing


def prepare(revisions: Sequence[Revision]) -> str:
    """Make the worktrees; pick one interpreter for all or a venv per revision. What was done."""
    for rev in revisions:
        if rev.worktree.exists():
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(rev.worktree)],
                check=False,
                capture_output=True,
            )
        git("worktree", "add", "--detach", str(rev.worktree), rev.sha)
    declared = [requirements(rev.sha) for rev in revisions]
    # Only the runtime dependencies must be installed: the bench extra is the peers, not run here.
    missing = unsatisfied(declared[0][0])
    if all(d == declared[0] for d in declared) and not missing:
        return (
            f"one venv for both ({sys.prefix}): the same declared dependencies and bench extra, "
            "the runtime ones installed here"
        )
    for rev in revisions:
        venv = rev.worktree / ".venv-ab"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "-e", f"{rev.worktree}[bench]", "packaging"], check=True)
        rev.python = str(venv / "bin" / "python")
    why = f"not installed here: {missing}" if missing else "different declared dependencies"
    return f"a venv per revision ({why})"


def check_imports(rev: Revision, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Refuse a run that imported our code from outside its worktree or whose services left no
    record; what was found otherwise."""
    root = str(rev.worktree.resolve()) + os.sep
    outside = [
        f"pid {r['pid']} {name}: {where}"
        for r in records
        for name, where in r["files"].items()
        if not str(Path(where).resolve()).startswith(root)
    ]
    if outside:
        raise RuntimeError(f"{rev.name} imported code from outside {root}: {outside[:5]}")
    seen: dict[str, int] = {}
    for record in records:
        main = record.get("main") or ""
        for service in SERVICES:
            if main.endswith(service.replace(".", os.sep) + os.sep + "__main__.py"):
                seen[service] = len(record["files"])
        if main == "" and "bench.cli" in record["files"]:
            seen["bench"] = len(record["files"])
    absent = [name for name in (*SERVICES, "bench") if name not in seen]
    if absent:
        raise RuntimeError(f"{rev.name}: no import record from {absent} (killed before exit?)")
    example = next(r["files"]["relayflow"] for r in records if "relayflow" in r["files"])
    return {"processes": len(records), "modules": seen, "relayflow": example}


def run_once(rev: Revision, options: Options, shim_dir: Path, tag: str) -> dict[str, Any]:
    log_dir = options.work_dir / "logs" / tag
    log_dir.mkdir(parents=True, exist_ok=True)
    imports = log_dir / "imports.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(rev.worktree), str(shim_dir)]),
        IMPORTS_ENV: str(imports),
    }
    argv = [rev.python, "-c", SHIM, *options.bench_args, "--log-dir", str(log_dir / "services")]
    load = load_average()
    started = time.monotonic()
    with (log_dir / "bench.out").open("w") as out:
        done = subprocess.run(
            argv, check=False, cwd=rev.worktree, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    seconds = time.monotonic() - started
    text = (log_dir / "bench.out").read_text(errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"{rev.name} ({tag}) exited with {done.returncode}:\n{text[-3000:]}")
    line = next(ln for ln in reversed(text.splitlines()) if ln.startswith("BENCH_JSON "))
    result: dict[str, Any] = orjson.loads(line.removeprefix("BENCH_JSON "))
    records = [orjson.loads(ln) for ln in imports.read_text().splitlines() if ln.strip()]
    return {
        "tag": tag,
        "seconds": round(seconds, 1),
        "load_before": load,
        "load_after": load_average(),
        "imports": check_imports(rev, records),
        "result": result,
    }


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @property
    def relative(self) -> float:
        return (self.high - self.low) / self.median if self.median else float("nan")

    def text(self, digits: int) -> str:
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}-{self.high:.{digits}f})"


def spread(values: Sequence[float | None]) -> Spread | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Spread(statistics.median(present), min(present), max(present))


def compare(
    metrics: Sequence[Metric], before: Revision, after: Revision
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        a_values = [metric.read(run["result"]) for run in before.runs]
        b_values = [metric.read(run["result"]) for run in after.runs]
        a, b = spread(a_values), spread(b_values)
        if a is None or b is None or not a.median:
            continue
        paired = (
            spread([y / x for x, y in zip(a_values, b_values, strict=True) if x and y is not None])
            if len(a_values) == len(b_values)
            else None  # runs left out (clean runs only): no longer in pairs
        )
        ratio = b.median / a.median
        noise = max(a.relative, b.relative)
        better = ratio < 1 if metric.lower_is_better else ratio > 1
        if not metric.judged:
            verdict = "(not ours)"
        elif abs(ratio - 1) <= noise:
            verdict = "within noise"
        else:
            verdict = f"{'better' if better else 'WORSE'} by {abs(ratio - 1) * 100:.1f}%"
        out[metric.key] = {
            "label": metric.label,
            "before": [a.median, a.low, a.high],
            "after": [b.median, b.low, b.high],
            "ratio": ratio,
            "paired": [paired.median, paired.low, paired.high] if paired else None,
            "noise": noise,
            "verdict": verdict,
            "worse_beyond_noise": verdict.startswith("WORSE"),
        }
    return out


def render(table: dict[str, dict[str, Any]], before: Revision, after: Revision) -> str:
    header = [
        "",
        f"{before.name} median (min-max)",
        f"{after.name} median (min-max)",
        "after/before",
        "paired (min-max)",
        "noise",
        "",
    ]
    rows = []
    for row in table.values():
        digits = 2 if row["before"][0] < 100 else 1
        rows.append(
            [
                row["label"],
                Spread(*row["before"]).text(digits),
                Spread(*row["after"]).text(digits),
                f"{row['ratio']:.3f}",
                Spread(*row["paired"]).text(3) if row["paired"] else "-",
                f"±{row['noise'] * 100:.1f}%",
                row["verdict"],
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in (0, len(cells) - 1) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def verdict(table: dict[str, dict[str, Any]]) -> str:
    def named(rows: list[dict[str, Any]]) -> str:
        return ", ".join(f"{r['label'].strip()} {(r['ratio'] - 1) * 100:+.1f}%" for r in rows)

    worse = [row for row in table.values() if row["worse_beyond_noise"]]
    better = [row for row in table.values() if row["verdict"].startswith("better")]
    tail = f"; better beyond noise: {named(better)}" if better else ""
    if not worse:
        return f"Verdict: no figure is worse beyond run-to-run noise{tail}."
    return f"Verdict: worse beyond run-to-run noise: {named(worse)}{tail}."


def clean_run(
    rev: Revision, options: Options, shim_dir: Path, tag: str, meta: dict[str, Any]
) -> dict[str, Any]:
    """One run on a quiet machine: redone (up to `--retries` times) when the machine was busy
    just before or after it, or other processes took CPU during its loaded phase."""
    other = _cpu(lambda role: role == "other")
    for attempt in range(options.retries + 1):
        last = attempt == options.retries
        busy_before, waited = wait_quiet(options.quiet, options.max_wait)
        run = run_once(rev, options, shim_dir, tag if last else f"{tag}-try{attempt + 1}")
        run["busy_before"], run["waited_s"] = round(busy_before, 3), round(waited, 1)
        run["busy_after"] = round(machine_busy(), 3)
        other_ms = other(run["result"]) or 0.0
        why = [
            f"busy {name} {busy:.2f}"
            for name, busy in (("before", busy_before), ("after", run["busy_after"]))
            if busy > options.quiet
        ] + ([f"other {other_ms:.1f} ms/wf"] if other_ms > options.max_other else [])
        run["clean"] = not why
        flags = {k: run[k] for k in ("busy_before", "busy_after", "waited_s", "clean")}
        (options.work_dir / "logs" / run["tag"] / "run.json").write_bytes(
            orjson.dumps({**flags, "why": why})
        )
        if not why or last:
            if not last:  # a clean run: its log dir takes the slot's name
                (options.work_dir / "logs" / run["tag"]).rename(options.work_dir / "logs" / tag)
                run["tag"] = tag
            return run
        meta["rejected"].append({"tag": run["tag"], "why": why})
        print(f"    {tag}: interfered with ({', '.join(why)}), again", flush=True)
    raise AssertionError("unreachable")


def measure(options: Options) -> tuple[Revision, Revision, dict[str, Any]]:
    """Make the worktrees, run the rounds, remove the worktrees; the revisions with their runs."""
    shas = {label: git("rev-parse", "--verify", f"{spec}^{{commit}}")
            for label, spec in (("before", options.before), ("after", options.after))}  # fmt: skip
    tmp = Path(tempfile.gettempdir())
    before, after = (
        Revision(label, spec, shas[label], tmp / f"ab-{label}-{shas[label][:8]}")
        for label, spec in (("before", options.before), ("after", options.after))
    )
    print(f"bench.ab: {before.name} ({options.before}) vs {after.name} ({options.after}), "
          f"{options.rounds} rounds A B A B ..., work dir {options.work_dir}",
          flush=True)  # fmt: skip
    meta: dict[str, Any] = {
        "before": {"spec": before.spec, "sha": before.sha},
        "after": {"spec": after.spec, "sha": after.sha},
        "rounds": options.rounds,
        "bench_args": list(options.bench_args),
        "concurrency": options.concurrency,
        "uptime": {"start": uptime()},
        "quiet": options.quiet,
        "max_other": options.max_other,
        "rejected": [],
    }
    print(f"load at start: {meta['uptime']['start']}", flush=True)
    shim_dir = options.work_dir / "shim"
    shim_dir.mkdir(exist_ok=True)
    (shim_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    started = time.time()
    metrics = _metrics(options.concurrency)
    try:
        meta["interpreter"] = prepare((before, after))
        (options.work_dir / META).write_bytes(orjson.dumps(meta))
        print(f"interpreter: {meta['interpreter']}", flush=True)
        print(f"bench arguments (both): {' '.join(options.bench_args)}", flush=True)
        for i in range(options.rounds):
            for rev in (before, after):
                run = clean_run(rev, options, shim_dir, f"round{i + 1}-{rev.label}", meta)
                rev.runs.append(run)
                figures = ", ".join(
                    f"{m.key} {v:.1f}"
                    for m in metrics
                    if m.key in BRIEF and (v := m.read(run["result"])) is not None
                )
                print(f"  round {i + 1}/{options.rounds} {rev.name}: {figures} "
                      f"[{run['seconds']:.0f} s, load {run['load_before']}, busy before/after "
                      f"{run['busy_before']:.2f}/{run['busy_after']:.2f}"
                      f"{'' if run['clean'] else ', INTERFERED'}; relayflow from "
                      f"{run['imports']['relayflow']}]", flush=True)  # fmt: skip
    finally:
        if not options.keep:
            for rev in (before, after):
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(rev.worktree)],
                    check=False,
                    capture_output=True,
                )
        shutil.rmtree(shim_dir, ignore_errors=True)
    meta["uptime"]["end"] = uptime()
    meta["seconds"] = round(time.time() - started, 1)
    (options.work_dir / META).write_bytes(orjson.dumps(meta))
    return before, after, meta


def reread(work_dir: Path) -> tuple[Revision, Revision, dict[str, Any]]:
    """The revisions and runs of an earlier (or interrupted) run, from its work dir's logs."""
    meta: dict[str, Any] = orjson.loads((work_dir / META).read_bytes())
    revisions = []
    for label in ("before", "after"):
        rev = Revision(label, meta[label]["spec"], meta[label]["sha"], Path("/nonexistent"))
        for log in sorted((work_dir / "logs").glob(f"round*-{label}"), key=_round_number):
            text = (log / "bench.out").read_text(errors="replace")
            lines = [ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")]
            if not lines:
                continue  # the run did not finish
            flags = (
                orjson.loads((log / "run.json").read_bytes()) if (log / "run.json").exists() else {}
            )
            result = orjson.loads(lines[-1].removeprefix("BENCH_JSON "))
            rev.runs.append({"tag": log.name, **flags, "result": result})
        revisions.append(rev)
    rounds = min(len(rev.runs) for rev in revisions)
    for rev in revisions:
        del rev.runs[rounds:]  # only whole rounds, so that the runs pair up
    meta["rounds"] = rounds
    meta.setdefault("uptime", {}).setdefault("end", "not recorded")
    return revisions[0], revisions[1], meta


def _round_number(path: Path) -> int:
    return int(path.name.removeprefix("round").split("-")[0])


def summarize(
    before: Revision, after: Revision, meta: dict[str, Any], json_out: Path | None
) -> None:
    metrics = _metrics(int(meta["concurrency"]))
    table = compare(metrics, before, after)
    print()
    print(f"{meta['rounds']} rounds; bench arguments: {' '.join(meta['bench_args'])}")
    rejected = meta.get("rejected", [])
    kept = sum(not run.get("clean", True) for rev in (before, after) for run in rev.runs)
    print(f"runs redone for interference: {len(rejected)}; interfered runs kept: {kept}")
    print(render(table, before, after))
    print()
    print(verdict(table))
    clean = {
        rev.label: [run for run in rev.runs if run.get("clean", True)] for rev in (before, after)
    }
    table_clean: dict[str, dict[str, Any]] | None = None
    if kept and all(len(runs) >= 2 for runs in clean.values()):
        a, b = (
            Revision(rev.label, rev.spec, rev.sha, rev.worktree, runs=clean[rev.label])
            for rev in (before, after)
        )
        table_clean = compare(metrics, a, b)
        print()
        print(f"Clean runs only ({len(a.runs)} before, {len(b.runs)} after; no longer paired):")
        print(render(table_clean, a, b))
        print()
        print(verdict(table_clean))
    print(f"load at start: {meta['uptime']['start']}")
    print(f"load at end:   {meta['uptime']['end']}")
    result = {
        **meta,
        "table": table,
        "verdict": verdict(table),
        "table_clean": table_clean,
        "runs": {
            rev.label: [
                {k: v for k, v in run.items() if k != "result"}
                | {"figures": {m.key: m.read(run["result"]) for m in metrics}}
                for run in rev.runs
            ]
            for rev in (before, after)
        },
    }
    line = orjson.dumps(result).decode()
    if json_out is not None:
        json_out.write_text(line + "\n")
    print("AB_JSON " + line)
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> None:
    options = parse(argv)
    if options.report is not None:
        summarize(*reread(options.report), options.json_out)
        return
    options.work_dir.mkdir(parents=True, exist_ok=True)
    summarize(*measure(options), options.json_out)


if __name__ == "__main__":
    main()
