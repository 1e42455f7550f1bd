"""network_{profile}_{audio_concealed,video_freeze}: a kiosk call on each network profile of the lab
(kiosk.netlab), against two Chromium pages of the project's browser client over the same impaired
path, in the same run; bare aiortc over the same path in the notes.

Per profile and repeat, three calls through a fresh lab (same profile, same seed): the kiosk pair (two
`kiosk endpoint` processes, kiosk.netlab.call), the Chromium pair (bench.netlab_chromium) and the bare
aiortc pair (bench.netlab_aiortc). Each pair gives what each side received (both directions); the
figure is the median over directions and repeats.

- audio_concealed: percent of played audio that was concealed (or stretched, waiting) because packets
  were missing: the kiosk's playout counts; Chromium's concealedSamples / totalSamplesReceived; for bare
  aiortc, the 20 ms playout ticks that found no frame. Shares under 0.1 % count as 0.1 % (a floor, so
  that a clean network's 0 against 0 gives a ratio of 1, not a division by zero).
- video_freeze: percent of the watched time spent in freezes (WebRTC's definition, kiosk.calls.freezes;
  Chromium's totalFreezesDuration); the same 0.1 % floor.

Target for both: the kiosk no worse than Chromium (ratio <= 1.0). The notes give each pair's audio delay
(the kiosk's and Chromium's are estimates: playout target or jitterBufferDelay, plus half the round
trip), video delay p95 (capture stamp to decode, where the pair can read stamps), frames per second and
the received width.

Run: `python -m bench --only network` (root, iproute2, /dev/net/tun, coturn, Chromium); or
`python -m bench.network --profile wifi --seconds 30` for one profile's three pairs, printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.harness import Benchmark, RunSettings, Samples
from kiosk.netlab.mouth_to_ear import delays_between, percentiles
from kiosk.netlab.profiles import Profile, profile
from kiosk.netlab.quality import PairQuality
from kiosk.netlab.speech_quality import add_speech_quality

PROFILES = ["clean", "wifi", "bad-wifi", "thin-uplink", "handover", "udp-blocked"]
QUICK_PROFILES = ["wifi", "bad-wifi"]
SHARE_FLOOR = 0.1  # percent
CALL_SECONDS = 40.0  # long enough for thin-uplink's cap to lift (20 s) and handover's first blackout
QUICK_CALL_SECONDS = 20.0

PairRunner = Callable[[Path, Profile, float, int], list[PairQuality]]


WARMUP_SECONDS = 3.0  # after the first media, as the Chromium and aiortc pairs measure


def _window(timeline: list[dict[str, Any]], uid: str) -> tuple[dict[str, Any], dict[str, Any], float] | None:
    """The receiver's stats for `uid` at the start of the steady window (WARMUP_SECONDS after its
    first media) and at the end, and the window's length: from its once-a-second stats lines."""
    lines = [(line["t"], line["data"]["participants"].get(uid)) for line in timeline]
    lines = [(t, p) for t, p in lines if p]
    first = next((t for t, p in lines if p.get("video_frames_decoded") or p.get("audio_frames_played")), None)
    if first is None:
        return None
    steady = [(t, p) for t, p in lines if t >= first + WARMUP_SECONDS]
    if len(steady) < 2:
        return None
    (t0, start), (t1, end) = steady[0], steady[-1]
    return start, end, t1 - t0


def _quality_of(timeline: list[dict[str, Any]], uid: str, name: str, direction: str) -> PairQuality:
    window = _window(timeline, uid)
    if window is None:
        return PairQuality(pair="kiosk", profile=name, note=f"failed: no steady window ({direction})")
    start, end, span = window

    def delta(key: str) -> float:
        return float(end.get(key) or 0) - float(start.get(key) or 0)

    played = delta("audio_frames_played")
    made_up = delta("audio_frames_concealed") + delta("audio_frames_expanded")
    rtt, playout = end.get("round_trip_time_ms"), end.get("audio_playout_delay_ms")
    return PairQuality(
        pair="kiosk",
        profile=name,
        audio_concealed_share=made_up / played if played > 0 else None,
        audio_delay_ms_p50=(playout + rtt / 2) if playout is not None and rtt is not None else None,
        video_freeze_share=delta("video_freeze_seconds") / span if span > 0 else None,
        video_fps=delta("video_frames_decoded") / span if span > 0 else None,
        video_delay_ms_p95=end.get("latency_ms_p95"),
        note=f"{direction}; window {span:.1f} s; audio delay estimated: playout target + RTT/2",
    )


def _following_the_cap(timeline: list[dict[str, Any]], lab_profile: Profile) -> dict[str, float]:
    """For a capped uplink, from the kiosk's stats a second: how long from its first media until its
    video encoder's bitrate is under the first cap (its audio is 32 kbit/s more), and how long after
    the cap is raised until it sends its full picture again. Lab time and call time start within a
    second of each other."""
    rates = lab_profile.up.rate
    points = [
        (line["t"], line["data"].get("videoSentBitrate"), line["data"].get("videoSentSize"))
        for line in timeline
    ]
    points = [(t, rate, size) for t, rate, size in points if rate]
    found: dict[str, float] = {}
    if not points:
        return found
    started = points[0][0]
    under = next((t for t, rate, _ in points if rate < rates[0].bits_per_second), None)
    if under is not None:
        found["under_cap_after_s"] = under - started
    if len(rates) > 1:
        lifted = started + rates[1].at
        full = max((tuple(size) for _, _, size in points if size), default=None)
        back = next((t for t, _, size in points if t >= lifted and size and tuple(size) == full), None)
        if back is not None:
            found["full_picture_after_lift_s"] = back - lifted
    return found


# The emulated microphone hears no room (no echo, no noise): the audio processing has nothing to
# remove, and its noise suppressor alone takes a synthetic voice from PESQ 4.6 to 4.0 (the higher
# voice to 1.6) before any network. Off on both kiosks, as on both Chromium pages
# (bench/netlab_chromium.py), so that the figures are those of the network path.
RAW_AUDIO = "echo_cancellation = false\nnoise_suppression = false\nauto_gain_control = false\n"


def run_kiosk_pair(workdir: Path, lab_profile: Profile, seconds: float, seed: int) -> list[PairQuality]:
    from bench.netlab_chromium import write_voice_wav
    from kiosk.media.emulated import second_voice, speech_like_voice
    from kiosk.netlab.call import run_lab_call

    every_second = ["--stats-every", "1"]
    # Each side's emulated speaker writes what it played, with when, and its microphone (the
    # synthetic voice) when it spoke: the mouth-to-ear delay comes from the audio itself.
    # The desk speaks the second voice, so that the directions are told apart (and the echo
    # canceller hears two talkers, not one talker and its echo).
    heard = {side: workdir / f"{side}-audio" for side in ("kiosk", "desk")}
    voices = {"door": speech_like_voice(), "desk": second_voice()}
    desk_voice = write_voice_wav(workdir / "desk-voice.wav", voices["desk"])
    configs = {}
    for side, directory in heard.items():
        configs[side] = workdir / f"{side}.toml"
        sound = f'sound_file = "{desk_voice}"\n' if side == "desk" else ""
        configs[side].write_text(f'[audio]\nspeaker_dir = "{directory}"\n{sound}{RAW_AUDIO}')
    report = run_lab_call(
        workdir,
        lab_profile,
        seconds=seconds,
        seed=seed,
        turn_tcp=lab_profile.needs_turn_over_tcp,
        kiosk_args=[*every_second, "--config", str(configs["kiosk"])],
        desk_args=[*every_second, "--config", str(configs["desk"])],
    )

    def timeline(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e | {"data": e["data"]} for e in events if e.get("status") == "stats"]

    up = _quality_of(
        timeline(report.desk_events), "door", lab_profile.name, "desk received from the kiosk (up)"
    )
    if lab_profile.up.rate:
        up.figures.update(_following_the_cap(timeline(report.kiosk_events), lab_profile))
    down = _quality_of(timeline(report.kiosk_events), "desk", lab_profile.name, "kiosk received (down)")
    for quality, listener, talker, spoken in ((up, "desk", "door", "kiosk"), (down, "kiosk", "desk", "desk")):
        voice = voices[talker]
        _mouth_to_ear(quality, delays_between(heard[listener], talker, heard[spoken], WARMUP_SECONDS, voice))
        played = next(heard[listener].glob(f"*/{talker}.wav"), None)
        add_speech_quality(quality, played, WARMUP_SECONDS, voice)
    return [up, down]


def _mouth_to_ear(quality: PairQuality, found: list[float]) -> None:
    """The measured mouth-to-ear delay in place of the estimate (playout target + RTT/2), if any."""
    if not found:
        quality.note += "; no mouth-to-ear windows matched the voice: the estimate is kept"
        return
    quality.audio_delay_ms_p50, quality.audio_delay_ms_p95 = percentiles(found)
    quality.figures["mouth_to_ear_windows"] = float(len(found))
    quality.note = quality.note.replace(
        "audio delay estimated: playout target + RTT/2", "audio delay measured"
    )


def _runners() -> dict[str, PairRunner]:
    from bench.netlab_aiortc import run_aiortc_pair
    from bench.netlab_chromium import run_chromium_pair

    return {
        "kiosk": run_kiosk_pair,
        "chromium": lambda w, p, s, seed: run_chromium_pair(w, p, s, seed),
        "aiortc": lambda w, p, s, seed: run_aiortc_pair(w, p, s, seed),
    }


def run_profile(name: str, seconds: float, seed: int = 0) -> dict[str, list[PairQuality]]:
    """The three pairs, one after the other, each through its own lab of the same profile and seed."""
    results: dict[str, list[PairQuality]] = {}
    for pair, runner in _runners().items():
        with tempfile.TemporaryDirectory(prefix=f"netbench-{pair}-") as tmp:
            try:
                results[pair] = runner(Path(tmp), profile(name), seconds, seed)
            except Exception as exc:  # a pair that cannot run is reported, the others still are
                results[pair] = [PairQuality(pair=pair, profile=name, note=f"failed: {exc}"[:500])]
    return results


def _percent(share: float | None) -> float | None:
    return None if share is None else max(share * 100, SHARE_FLOOR)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _summary(results: list[dict[str, list[PairQuality]]]) -> dict[str, dict[str, float | None]]:
    """Per pair, the median over directions and repeats of each figure."""
    table: dict[str, dict[str, float | None]] = {}
    for pair in ("kiosk", "chromium", "aiortc"):
        rows = [q for run in results for q in run.get(pair, [])]
        table[pair] = {
            "audio_concealed_pct": _median([_percent(q.audio_concealed_share) for q in rows]),
            "video_freeze_pct": _median([_percent(q.video_freeze_share) for q in rows]),
            "audio_delay_ms_p50": _median([q.audio_delay_ms_p50 for q in rows]),
            "audio_delay_ms_p95": _median([q.audio_delay_ms_p95 for q in rows]),
            "video_delay_ms_p95": _median([q.video_delay_ms_p95 for q in rows]),
            "video_fps": _median([q.video_fps for q in rows]),
        }
        for key in sorted({k for q in rows for k in q.figures}):
            table[pair][key] = _median([q.figures.get(key) for q in rows])
    return table


class ProfileRuns:
    """Runs a profile's pairs once, for both of its figures (they come from the same calls)."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, bool, int | None], list[dict[str, list[PairQuality]]]] = {}

    def get(self, name: str, settings: RunSettings) -> list[dict[str, list[PairQuality]]]:
        key = (name, settings.quick, settings.repeat)
        if key not in self._done:
            repeats = settings.repeats(full=3, quick=1)
            seconds = QUICK_CALL_SECONDS if settings.quick else CALL_SECONDS
            self._done[key] = [run_profile(name, seconds, seed) for seed in range(repeats)]
        return self._done[key]


_RUNS = ProfileRuns()


def _measured_delay(q: PairQuality) -> float | None:
    """The mouth-to-ear p95 if it was measured from the audio (not the estimate)."""
    return q.audio_delay_ms_p95 if "mouth_to_ear_windows" in q.figures else None


async def _measure(name: str, figure: str, settings: RunSettings) -> Samples:
    runs = await asyncio.to_thread(_RUNS.get, name, settings)
    values: list[float] = []
    baseline: list[float] = []

    def value(q: PairQuality) -> float | None:
        return _measured_delay(q) if figure == "audio_delay_ms_p95" else _percent(getattr(q, figure))

    for run in runs:
        for q in run.get("kiosk", []):
            v = value(q)
            if v is not None:
                values.append(v)
        for q in run.get("chromium", []):
            v = value(q)
            if v is not None:
                baseline.append(v)
    failures = [q.note for run in runs for qs in run.values() for q in qs if q.note.startswith("failed")]
    notes: dict[str, Any] = {"pairs": _summary(runs)}
    if failures:
        notes["failures"] = failures
    return Samples(values, baseline, notes)


def _benchmarks() -> list[Benchmark]:
    found: list[Benchmark] = []
    for name in PROFILES:
        slug = name.replace("-", "_")
        found.append(
            Benchmark(
                name=f"network_{slug}_audio_concealed",
                unit="%",
                target_ratio=1.0,
                measures=f"kiosk <-> kiosk on the {name} profile: percent of played audio concealed "
                "for missing packets (median of both directions and the repeats; 0.1 % floor)",
                baseline_measures="Chromium <-> Chromium (the project's browser client) on the same "
                "impaired path in the same run: concealedSamples / totalSamplesReceived",
                run=partial(_measure, name, "audio_concealed_share"),
            )
        )
        found.append(
            Benchmark(
                name=f"network_{slug}_video_freeze",
                unit="%",
                target_ratio=1.0,
                measures=f"kiosk <-> kiosk on the {name} profile: percent of the watched time in video "
                "freezes (WebRTC's definition; median of both directions and the repeats; 0.1 % floor)",
                baseline_measures="Chromium <-> Chromium on the same impaired path in the same run: "
                "totalFreezesDuration over the receiving time",
                run=partial(_measure, name, "video_freeze_share"),
            )
        )
        found.append(
            Benchmark(
                name=f"network_{slug}_audio_delay",
                unit="ms",
                target_ratio=1.2,
                measures=f"kiosk <-> kiosk on the {name} profile: mouth-to-ear delay p95, measured from "
                "the played voice (emulated microphone's frame to the frame handed to the speaker; "
                "median of both directions and the repeats)",
                baseline_measures="Chromium <-> Chromium on the same impaired path in the same run: the "
                "same measure from the page's microphone track to its played remote track (both tapped "
                "with an AudioWorklet)",
                run=partial(_measure, name, "audio_delay_ms_p95"),
            )
        )
    return found


BENCHMARKS = _benchmarks()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="append", choices=PROFILES)
    parser.add_argument("--seconds", type=float, default=CALL_SECONDS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in args.profile or QUICK_PROFILES:
        results = run_profile(name, args.seconds, args.seed)
        for qualities in results.values():
            for q in qualities:
                print(json.dumps(q.to_json()))
        print(json.dumps({"profile": name, "summary": _summary([results])}))


if __name__ == "__main__":
    main()
