"""call_setup: how long until the first remote video frame is decoded, SDK versus bare aiortc.

Subject: two Calls endpoints (emulated 640x480 @ 30 fps camera and a tone microphone) through a real
embedded call server on loopback. The first endpoint is already in the session; the clock starts
when the second one calls `start_session` and stops at the first decoded remote video frame at
either endpoint. The stop time is taken from the SDK's `view.render_frame` hook, which the session
calls synchronously for every decoded remote frame, so no polling delay is added.

Baseline: two bare RTCPeerConnections in the same process, each sending the same emulated camera and
microphone sendrecv, exchanging offer and answer directly; the clock starts at createOffer (the peer
connections and tracks already exist) and stops at the first decoded video frame on either side.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import av

from bench.bare import BarePair
from bench.common import bench_server, loopback_only, new_session_id, wait_until
from bench.harness import Benchmark, RunSettings, Samples
from kiosk.calls import Calls, CallSettingsBuilder
from kiosk.media.emulated import EmulatedDevices

WIDTH, HEIGHT, FPS = 640, 480, 30.0
FIRST_FRAME_TIMEOUT = 15.0
SETTLE_SECONDS = 0.2  # lets aiortc finish closing transports between runs


class FirstFrame:
    """Set when the first remote video frame of a run is decoded, wherever that happens.

    Passed to `start_session` as the view (the SDK calls `render_frame` per decoded remote frame),
    and given to the baseline's BarePair as its frame callback.
    """

    def __init__(self) -> None:
        self.at: float | None = None
        self.sender: str | None = None
        self.event = asyncio.Event()

    def render_frame(self, uid: str, frame: av.VideoFrame) -> None:
        if self.at is None:
            self.at = time.monotonic()
            self.sender = uid
            self.event.set()

    async def wait(self) -> float:
        await asyncio.wait_for(self.event.wait(), FIRST_FRAME_TIMEOUT)
        assert self.at is not None
        return self.at


def _devices(tone_hz: float) -> EmulatedDevices:
    return EmulatedDevices(width=WIDTH, height=HEIGHT, fps=FPS, tone_hz=tone_hz)


# ----------------------------------------------------------------------------- subject: the SDK


@asynccontextmanager
async def _sdk_pair() -> AsyncIterator[tuple[Calls, Calls]]:
    """Two logged-in endpoints on one embedded server; reused across runs (login is not call setup)."""
    async with bench_server("bench-first", "bench-second") as env:
        made: list[Calls] = []
        try:
            for uid, tone in (("bench-first", 440.0), ("bench-second", 660.0)):
                calls = Calls(
                    env.url,
                    auth_token=env.tokens[uid],
                    devices=_devices(tone),
                    ice_host_addresses=["127.0.0.1"],
                    recording_dir=env.tmp / "recordings" / uid,
                )
                made.append(calls)
                await calls.login()
            yield made[0], made[1]
        finally:
            for calls in made:
                await calls.close()


async def _sdk_once(first: Calls, second: Calls, notes: dict[str, list[Any]]) -> float:
    """One call setup through the SDK; returns milliseconds."""
    session_id = new_session_id()
    settings = CallSettingsBuilder().build()
    probe = FirstFrame()
    await first.start_session(await first.generate_token(session_id), settings, view=probe)
    token = await second.generate_token(session_id)
    try:
        started = time.monotonic()
        await second.start_session(token, settings, view=probe)
        elapsed_ms = (await probe.wait() - started) * 1000
        # The SDK's own figure for the joiner (from inside its start_session), as a cross-check;
        # the joiner may decode its first frame a little after the first endpoint does.
        with contextlib.suppress(TimeoutError):
            await wait_until(
                lambda: second.session is not None and second.session.first_remote_frame_ms is not None,
                5.0,
                "the joiner's first frame",
            )
        stats = await second.get_session_stats()
        if stats.first_remote_frame_ms is not None:
            notes["sdk_joiner_first_remote_frame_ms"].append(stats.first_remote_frame_ms)
        notes["first_frame_decoded_by"].append("first" if probe.sender == "bench-second" else "second")
        return elapsed_ms
    finally:
        await second.end_session()
        # Leaving a 1:1 session ends it for the other side too; wait for that, then make sure.
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: first.session is None, 2.0, "end of the first endpoint's session")
        await first.end_session()
        await asyncio.sleep(SETTLE_SECONDS)


# ----------------------------------------------------------------------------- baseline: bare aiortc


async def _baseline_once() -> float:
    """Offer to first decoded frame between two bare peer connections; returns milliseconds."""
    probe = FirstFrame()
    # Built before the clock starts: the baseline is timed from createOffer, as specified.
    pair = BarePair((_devices(440.0), _devices(660.0)), on_video=probe.render_frame)
    try:
        started = time.monotonic()
        await pair.negotiate()
        return (await probe.wait() - started) * 1000
    finally:
        await pair.close()
        await asyncio.sleep(SETTLE_SECONDS)


# ----------------------------------------------------------------------------- the benchmark


async def run(settings: RunSettings) -> Samples:
    loopback_only()
    runs = settings.repeats(full=15, quick=3)
    notes: dict[str, list[Any]] = {"sdk_joiner_first_remote_frame_ms": [], "first_frame_decoded_by": []}
    values: list[float] = []
    baseline: list[float] = []
    async with _sdk_pair() as (first, second):
        # One discarded run of each: the first use of a codec, DTLS and the server pays one-off costs.
        await _sdk_once(first, second, {k: [] for k in notes})
        await _baseline_once()
        for i in range(runs):
            # Alternate which goes first, so slow drift on the machine does not favour either.
            if i % 2 == 0:
                values.append(await _sdk_once(first, second, notes))
                baseline.append(await _baseline_once())
            else:
                baseline.append(await _baseline_once())
                values.append(await _sdk_once(first, second, notes))
    joiner = notes["sdk_joiner_first_remote_frame_ms"]
    by = notes["first_frame_decoded_by"]
    return Samples(
        values,
        baseline,
        {
            "resolution": f"{WIDTH}x{HEIGHT}@{FPS:g}",
            "sdk_joiner_first_remote_frame_ms_median": statistics.median(joiner) if joiner else None,
            "first_frame_decoded_by_first_endpoint": by.count("first"),
            "first_frame_decoded_by_second_endpoint": by.count("second"),
            "warmup_runs_discarded": 1,
        },
    )


BENCHMARKS = [
    Benchmark(
        name="call_setup",
        unit="ms",
        target_ratio=1.5,
        measures=(
            "Calls SDK, two endpoints via an embedded call server on loopback, emulated 640x480@30 video "
            "and tone audio: from the second endpoint's start_session call to the first decoded remote "
            "video frame at either endpoint"
        ),
        baseline_measures=(
            "two bare aiortc RTCPeerConnections in one process, same emulated audio+video sendrecv, "
            "iceServers=[] and host candidates 127.0.0.1: from createOffer to the first decoded video "
            "frame at either side"
        ),
        run=run,
    )
]
