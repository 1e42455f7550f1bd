"""The harness: run the selected benchmarks, summarise their samples, print a table, write JSON."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"


@dataclass(frozen=True)
class RunSettings:
    """How hard to measure: `quick` shortens runs; `repeat` overrides every benchmark's run count."""

    quick: bool = False
    repeat: int | None = None

    def repeats(self, full: int, quick: int) -> int:
        if self.repeat is not None:
            return self.repeat
        return quick if self.quick else full


@dataclass
class Samples:
    """What one benchmark measured: one value per run, for the subject and for its baseline."""

    values: list[float]
    baseline: list[float]
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Benchmark:
    """One figure. Its target is one of: a ratio to the baseline (`target_ratio`), a fixed value
    (`target_value`, in `unit`), or the baseline plus a margin (`target_over_baseline`, in `unit`).
    With `higher_is_better` the figure must reach the target instead of staying under it."""

    name: str
    unit: str
    target_ratio: float | None  # passes when median / baseline median is at most this
    measures: str  # what the figure is, in words, copied into the results
    baseline_measures: str
    run: Callable[[RunSettings], Awaitable[Samples]]
    higher_is_better: bool = False
    target_value: float | None = None
    target_over_baseline: float | None = None

    def __post_init__(self) -> None:
        kinds = [self.target_ratio, self.target_value, self.target_over_baseline]
        if sum(k is not None for k in kinds) != 1:
            raise ValueError(
                f"{self.name}: give exactly one of target_ratio, target_value, target_over_baseline"
            )

    def target_text(self) -> str:
        sense = ">=" if self.higher_is_better else "<="
        if self.target_ratio is not None:
            return f"{sense} {self.target_ratio}x"
        if self.target_value is not None:
            return f"{sense} {_fmt(self.target_value)} {self.unit}"
        return f"{sense} base+{_fmt(self.target_over_baseline)}"

    def passes(self, value: float, baseline: float, ratio: float) -> bool:
        if self.target_ratio is not None:
            measured, limit = ratio, self.target_ratio
        elif self.target_value is not None:
            measured, limit = value, self.target_value
        else:
            assert self.target_over_baseline is not None
            measured, limit = value, baseline + self.target_over_baseline
        return measured >= limit if self.higher_is_better else measured <= limit


def spread(values: list[float]) -> dict[str, float]:
    """Min, max and the quartiles (equal to the median when there is one value)."""
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {"min": ordered[0], "q1": q1, "q3": q3, "max": ordered[-1]}


def summarise(bench: Benchmark, samples: Samples) -> dict[str, Any]:
    if not samples.values or not samples.baseline:
        raise ValueError(f"{bench.name}: no samples")
    value = statistics.median(samples.values)
    baseline = statistics.median(samples.baseline)
    ratio = value / baseline if baseline > 0 else float("inf")
    return {
        "figure": bench.name,
        "value": value,
        "unit": bench.unit,
        "spread": spread(samples.values),
        "baseline": baseline,
        "baseline_spread": spread(samples.baseline),
        "ratio": ratio,
        "target": bench.target_text(),
        "target_ratio": bench.target_ratio,
        "target_value": bench.target_value,
        "target_over_baseline": bench.target_over_baseline,
        "passed": bench.passes(value, baseline, ratio),
        "higher_is_better": bench.higher_is_better,
        "runs": len(samples.values),
        "baseline_runs": len(samples.baseline),
        "samples": samples.values,
        "baseline_samples": samples.baseline,
        "measures": bench.measures,
        "baseline_measures": bench.baseline_measures,
        "notes": samples.notes,
    }


def failed_record(bench: Benchmark, error: str) -> dict[str, Any]:
    """A benchmark that could not produce figures still gets a row, so a broken one is never silent."""
    return {
        "figure": bench.name,
        "value": None,
        "unit": bench.unit,
        "spread": None,
        "baseline": None,
        "ratio": None,
        "target": bench.target_text(),
        "passed": False,
        "runs": 0,
        "error": error,
        "measures": bench.measures,
        "baseline_measures": bench.baseline_measures,
    }


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except Exception:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_description() -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "aiortc": _version("aiortc"),
        "av": _version("av"),
        "aioice": _version("aioice"),
        "aiohttp": _version("aiohttp"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_commit": _git_commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_table(records: list[dict[str, Any]]) -> str:
    header = ["figure", "median", "spread (min-max)", "unit", "baseline", "ratio", "target", "result"]
    rows = [header]
    for r in records:
        if r.get("error"):
            rows.append([r["figure"], "-", "-", r["unit"], "-", "-", r["target"], "ERROR"])
            continue
        s = r["spread"]
        rows.append(
            [
                r["figure"],
                _fmt(r["value"]),
                f"{_fmt(s['min'])}-{_fmt(s['max'])}",
                r["unit"],
                _fmt(r["baseline"]),
                f"{r['ratio']:.2f}",
                r["target"],
                "pass" if r["passed"] else "FAIL",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# The benchmark modules, in the order the table lists them; each defines BENCHMARKS.
MODULES = [
    "call_setup",
    "cpu_call",
    "latency",
    "button",
    "audio_switch",
    "udp_wakeup",
    "group_cost",
    "sfu_group",
    "memory",
    "server_capacity",
    "echo",
]
# Run only when named with --only: they need root and network namespaces (the network lab, coturn,
# Chromium) and take minutes per figure.
OPT_IN_MODULES = ["network", "recovery"]


def registry(opt_in: bool = False) -> list[Benchmark]:
    # Imported here so `--help` does not pay for aiortc and PyAV.
    benchmarks: list[Benchmark] = []
    for name in MODULES + (OPT_IN_MODULES if opt_in else []):
        benchmarks += importlib.import_module(f"bench.{name}").BENCHMARKS
    return benchmarks


def select(benchmarks: list[Benchmark], only: list[str] | None) -> list[Benchmark]:
    """`--only cpu_per_call_second` picks both codecs; `--only cpu_per_call_second_vp8` picks one."""
    if not only:
        return benchmarks
    chosen = [b for b in benchmarks if any(b.name == o or b.name.startswith(o + "_") for o in only)]
    if not chosen:
        names = ", ".join(b.name for b in benchmarks)
        raise SystemExit(f"no benchmark matches {only}; known: {names}")
    return chosen


async def run_all(benchmarks: list[Benchmark], settings: RunSettings) -> list[dict[str, Any]]:
    records = []
    for bench in benchmarks:
        started = time.monotonic()
        print(f"running {bench.name} ...", file=sys.stderr, flush=True)
        first_failure: str | None = None
        # A run that fails (a wait timed out on a machine busy with something else) is tried once more;
        # the failure stays in the record's notes, and a second failure is the figure's error.
        for attempt in (1, 2):
            try:
                samples = await bench.run(settings)
                record = summarise(bench, samples)
                break
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                failure = f"{type(exc).__name__}: {exc}"
                if attempt == 2:
                    record = failed_record(bench, failure)
                    break
                first_failure = failure
                print(f"  {bench.name} failed ({failure}); trying once more", file=sys.stderr, flush=True)
        if first_failure is not None and "error" not in record:
            record.setdefault("notes", {})["failed_first"] = first_failure
        record["seconds"] = round(time.monotonic() - started, 1)
        print(f"  {bench.name} done in {record['seconds']} s", file=sys.stderr, flush=True)
        records.append(record)
    return records


def write_results(
    path: Path, settings: RunSettings, machine: dict[str, Any], records: list[dict[str, Any]]
) -> None:
    document = {
        "machine": machine,
        "mode": "quick" if settings.quick else "full",
        "repeat_override": settings.repeat,
        "records": records,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmarks of the call endpoint against same-run baselines"
    )
    parser.add_argument("--quick", action="store_true", help="few repeats, short runs (about 30 s in all)")
    parser.add_argument("--repeat", type=int, metavar="N", help="runs per figure (overrides the defaults)")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only this benchmark (repeatable; prefix match)"
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"results JSON (default {DEFAULT_OUTPUT})"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    # aiortc and aioice log expected teardown noise at WARNING; the table is what matters here.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    benchmarks = registry(opt_in=bool(args.only) or args.list)
    if args.list:
        for b in benchmarks:
            print(f"{b.name}: {b.measures} [{b.unit}]")
        return 0
    settings = RunSettings(quick=args.quick, repeat=args.repeat)
    chosen = select(benchmarks, args.only)
    machine = machine_description()  # before the run: its date and load average are the starting ones
    records = asyncio.run(run_all(chosen, settings))
    write_results(args.output, settings, machine, records)
    print(format_table(records))
    print(f"results written to {args.output}")
    # Exit status says whether the harness worked, not whether targets were met.
    return 1 if any(r.get("error") for r in records) else 0
