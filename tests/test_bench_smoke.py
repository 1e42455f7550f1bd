"""The benchmark harness works end to end in quick mode. It checks the harness, never the speed."""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {
    "call_setup",
    "cpu_per_call_second_vp8",
    "cpu_per_call_second_h264",
    "latency_decoded_p50",
    "latency_decoded_p95",
    "latency_on_screen_p50",
    "latency_on_screen_p95",
    "button_to_remote_muted_p50",
    "button_to_remote_muted_p99",
    "button_to_remote_silence_p50",
    "audio_switch_loop_stall",
    "udp_delay_busy_loop",
    "group_cost_3_peers",
    "sfu_group_6_party_cpu",
    "memory_rss_in_call",
    "memory_growth_join_leave",
    "server_memory_per_connection",
    "server_ringing_latency_p99",
    "echo_erle",
    "aec_cpu_per_second",
}


def _positive_number(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.timeout(300)
def test_quick_run_writes_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=290,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(output.read_text())

    machine = document["machine"]
    for key in ("cpu_model", "cores", "python", "aiortc", "av", "date"):
        assert machine[key], key
    assert document["mode"] == "quick"

    records = {r["figure"]: r for r in document["records"]}
    assert set(records) == FIGURES
    for name, r in records.items():
        assert "error" not in r, (name, r.get("error"))
        # A growth can be zero or below (memory given back); every figure is a finite number, and its
        # baseline a positive one the ratio can be taken against.
        assert isinstance(r["value"], int | float) and math.isfinite(r["value"]), (name, r["value"])
        assert _positive_number(r["baseline"]), (name, "baseline", r["baseline"])
        assert math.isfinite(r["ratio"]), (name, "ratio", r["ratio"])
        assert isinstance(r["target"], str) and r["target"], name
        assert r["runs"] >= 1 and len(r["samples"]) == r["runs"]
        assert r["spread"]["min"] <= r["value"] <= r["spread"]["max"]
        assert isinstance(r["passed"], bool) and r["unit"]
        assert name in done.stdout  # the table names every figure


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # bench/ is not an installed package: it is imported from the checkout, as `python -m bench` does.
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("bench.harness")


def _bench(harness: ModuleType, name: str) -> Any:
    async def run(settings: Any) -> Any:
        raise AssertionError("not run here")

    return harness.Benchmark(name, "ms", 1.5, "subject", "baseline", run)


def test_summary_is_median_based_and_compares_with_target(harness: ModuleType) -> None:
    samples = harness.Samples([30.0, 10.0, 20.0, 1000.0], [10.0, 10.0, 12.0, 11.0])
    record = harness.summarise(_bench(harness, "x"), samples)
    assert record["value"] == 25.0 and record["baseline"] == 10.5
    assert record["spread"]["min"] == 10.0 and record["spread"]["max"] == 1000.0
    assert record["ratio"] == pytest.approx(25.0 / 10.5) and record["passed"] is False
    assert record["runs"] == 4


def test_only_selects_by_name_or_prefix(harness: ModuleType) -> None:
    names = ["call_setup", "cpu_per_call_second_vp8", "cpu_per_call_second_h264"]
    benches = [_bench(harness, n) for n in names]
    assert [b.name for b in harness.select(benches, ["cpu_per_call_second"])] == [
        "cpu_per_call_second_vp8",
        "cpu_per_call_second_h264",
    ]
    assert [b.name for b in harness.select(benches, ["call_setup"])] == ["call_setup"]
    with pytest.raises(SystemExit):
        harness.select(benches, ["nothing"])


def test_targets_by_ratio_value_or_margin(harness: ModuleType) -> None:
    async def run(settings: Any) -> Any:
        raise AssertionError("not run here")

    samples = harness.Samples([40.0, 42.0, 44.0], [10.0, 10.0, 10.0])
    by_value = harness.Benchmark("v", "ms", None, "s", "b", run, target_value=50.0)
    assert harness.summarise(by_value, samples)["passed"] is True
    tight = harness.Benchmark("v", "ms", None, "s", "b", run, target_value=41.0)
    assert harness.summarise(tight, samples)["passed"] is False
    margin = harness.Benchmark("m", "ms", None, "s", "b", run, target_over_baseline=33.0)
    assert harness.summarise(margin, samples)["passed"] is True  # 42 <= 10 + 33
    small_margin = harness.Benchmark("m", "ms", None, "s", "b", run, target_over_baseline=30.0)
    record = harness.summarise(small_margin, samples)
    assert record["passed"] is False and record["target"] == "<= base+30.0"
    higher = harness.Benchmark("h", "dB", None, "s", "b", run, higher_is_better=True, target_value=43.0)
    assert harness.summarise(higher, samples)["passed"] is False
    with pytest.raises(ValueError):
        harness.Benchmark("x", "ms", 1.5, "s", "b", run, target_value=3.0)


def test_a_run_that_fails_is_tried_once_more_and_the_failure_kept(harness: ModuleType) -> None:
    attempts: list[str] = []

    def flaky(name: str, failures: int) -> Any:
        async def run(settings: Any) -> Any:
            attempts.append(name)
            if attempts.count(name) <= failures:
                raise TimeoutError("no echo within 5 s")
            return harness.Samples([10.0], [10.0])

        return harness.Benchmark(name, "ms", 1.5, "subject", "baseline", run)

    settings = harness.RunSettings(quick=True)
    once, twice = asyncio.run(harness.run_all([flaky("once", 1), flaky("twice", 2)], settings))
    assert attempts == ["once", "once", "twice", "twice"]
    assert once["value"] == 10.0 and "error" not in once
    assert once["notes"]["failed_first"] == "TimeoutError: no echo within 5 s"
    assert twice["value"] is None and twice["error"] == "TimeoutError: no echo within 5 s"
