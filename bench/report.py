"""Markdown of a results file, for docs/performance.md: `python -m bench.report [results.json]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.harness import DEFAULT_OUTPUT, _fmt


def machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine.get('cpu_model')}, {machine.get('cores')} cores, {machine.get('system')}, "
        f"Python {machine.get('python')}, aiortc {machine.get('aiortc')}, PyAV {machine.get('av')}; "
        f"commit {machine.get('git_commit')}, {machine.get('date')}; load average at the start "
        f"{', '.join(f'{x:.2f}' for x in machine.get('load_average') or [])}"
    )


def table(records: list[dict[str, Any]]) -> str:
    lines = [
        "| figure | median | spread (min-max) | unit | baseline | ratio | target | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r.get("error"):
            lines.append(
                f"| {r['figure']} | - | - | {r['unit']} | - | - | {r['target']} | error: {r['error']} |"
            )
            continue
        s = r["spread"]
        result = "pass" if r["passed"] else "**FAIL**"
        lines.append(
            f"| {r['figure']} | {_fmt(r['value'])} | {_fmt(s['min'])}-{_fmt(s['max'])} | {r['unit']} | "
            f"{_fmt(r['baseline'])} | {r['ratio']:.2f} | {r['target']} | {result} |"
        )
    return "\n".join(lines)


def descriptions(records: list[dict[str, Any]]) -> str:
    parts = []
    for r in records:
        parts.append(
            f"- **{r['figure']}** ({r['unit']}, {r.get('runs', 0)} runs): {r['measures']}. "
            f"*Baseline:* {r['baseline_measures']}."
        )
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT_OUTPUT
    document = json.loads(path.read_text())
    print(f"Machine: {machine_line(document['machine'])}.\n")
    print(table(document["records"]))
    print()
    print(descriptions(document["records"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
