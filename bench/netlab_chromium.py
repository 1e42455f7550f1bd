"""A call between two headless Chromium pages of the browser client (kiosk/web) through the network lab
(kiosk/netlab), measured the way the kiosk pairs are: what each receiver saw, as PairQuality.

    results = run_chromium_pair(Path("/tmp/nl"), profile("wifi"), seconds=20)

    sudo .venv/bin/python -m bench.netlab_chromium --profile wifi --seconds 20   # JSON lines

The lab's namespaces: the call server (and coturn where the profile blocks UDP) in `s`, one Chromium in
`a` (the kiosk's impaired side, user "door") and one in `b` (the other side, user "desk"). Playwright
starts Chromium as its own child, so each browser is driven by a small process of this module run
inside its namespace (`python -m bench.netlab_chromium page ...`): it opens the app, joins the shared
session, polls getStats() of the page's peer connections, prints one JSON line with what it received
and stays in the call until its stdin closes, so that neither side leaves while the other measures.

The figures come from Chromium's inbound-rtp stats, over a steady window (from WARMUP_SECONDS after
the first decoded media to `seconds` after it):
- audio concealed share: concealedSamples / totalSamplesReceived;
- audio delay: jitterBufferDelay / jitterBufferEmittedCount plus half the ICE pair's round-trip time,
  one sample per poll; an estimate (no capture, encode, decode or playout time), said in the note;
- video freeze share and fps: from the times at which the page presented each remote video frame
  (requestVideoFrameCallback on a small <video> the init script gives every remote video track), by the
  kiosk's rule (kiosk.calls.freezes.FreezeMeter: a gap > max(3 x mean gap, mean + 150 ms)), over the
  first to the last frame of the window (frames whose callbacks were skipped, counted by
  metadata.presentedFrames, are spread over the gap before the next callback). Chromium's own totalFreezesDuration / freezeCount are per inbound stream:
  when a blackout makes the app rebuild the peer connection, the gap lies between two streams and
  neither counts it (0 freezes over a 2 s blackout), so they are only given in the note; width:
  frameWidth at the end.
Counters are summed over every peer connection the page made in the window, so a connection rebuilt
mid-call (after a blackout) does not make them go backwards.

Needs root, the lab's tools, Debian's chromium, the `playwright` package and, for udp-blocked, coturn.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiosk.calls.freezes import FreezeMeter
from kiosk.media.emulated import second_voice, speech_like_voice
from kiosk.media.sample_clock import SampleClock
from kiosk.netlab.call import TURN_SECRET, TURN_TCP_PORT, add_user, start_coturn, wait_for_port
from kiosk.netlab.lab import Lab, address
from kiosk.netlab.mouth_to_ear import delays, percentiles, production_clock
from kiosk.netlab.profiles import PROFILES, Profile, profile
from kiosk.netlab.quality import PairQuality
from kiosk.netlab.speech_quality import add_speech_quality

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/lib/chromium/chromium"
SERVER_PORT = 8080
TURN_PORT = TURN_TCP_PORT
ADMIN_KEY = "lab-admin-key"
WARMUP_SECONDS = 3.0
POLL_SECONDS = 0.5
MEDIA_START_TIMEOUT = 45.0
# The users of the two pages: door on the kiosk's side (ns a), desk on the other (ns b).
USERS = {"a": "door", "b": "desk"}

# Headless flags from docs/NOTES (no loopback flag: each namespace has its veth and a default route).
# Playwright adds --headless and a fresh temporary profile itself.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream=fps=30",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    # Plain IP host candidates, not mDNS names.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]

# Keeps every RTCPeerConnection the page makes, numbered, for the stats poll; and shows each remote video
# track in a small <video> of its own, recording when each of its frames is presented
# (requestVideoFrameCallback's presentationTime, seconds on performance.now's clock) in a bounded list the
# stats poll takes. Freezes are counted from these times by the kiosk's rule, across peer connections (the
# gap of a blackout that rebuilt the connection is in no inbound stream's own freeze counters).
_HOOK_PEER_CONNECTIONS = """
(() => {
  const Native = window.RTCPeerConnection;
  if (!Native || Native.__netlabHooked) return;
  window.__netlabPcs = [];
  const frames = (window.__netlabFrames = []);
  const frameErrors = (window.__netlabFrameErrors = []);
  const MAX_FRAMES = 20000;
  const watch = (track) => {
    const attach = () => {
      const video = document.createElement("video");
      video.muted = true;
      video.autoplay = true;
      video.playsInline = true;
      video.dataset.netlab = "frames";
      video.style.cssText = "position:fixed;right:0;bottom:0;width:64px;height:48px;" +
                            "z-index:2147483647;pointer-events:none";
      video.srcObject = new MediaStream([track]);
      document.body.appendChild(video);
      // [time, frames it stands for]: callbacks may skip frames (at most one per rendering step), which
      // metadata.presentedFrames counts.
      let presented = null;
      const onFrame = (now, metadata) => {
        const count = metadata.presentedFrames ?? (presented ?? 0) + 1;
        const shownAt = metadata.presentationTime ?? now;
        // A remote frame's captureTime is the sender's capture, put on this page's clock from the
        // RTCP sender reports: from it to the frame shown is the glass-to-glass delay (less the screen's
        // own scan-out).
        const captured = metadata.captureTime ?? null;
        frames.push([shownAt / 1000, presented === null ? 1 : Math.max(1, count - presented),
                     captured === null ? null : (shownAt - captured) / 1000]);
        presented = count;
        if (frames.length > MAX_FRAMES) frames.splice(0, frames.length - MAX_FRAMES);
        video.requestVideoFrameCallback(onFrame);
      };
      video.requestVideoFrameCallback(onFrame);
      video.play().catch((error) => frameErrors.push(`video play: ${error}`));
      track.addEventListener("ended", () => video.remove());
    };
    if (document.body) attach();
    else document.addEventListener("DOMContentLoaded", attach, { once: true });
  };
  class Hooked extends Native {
    constructor(...args) {
      super(...args);
      this.__netlabId = window.__netlabPcs.length;
      window.__netlabPcs.push(this);
      this.addEventListener("track", (event) => {
        if (event.track.kind === "video") watch(event.track);
        if (event.track.kind === "audio" && window.__netlabTapRemote) window.__netlabTapRemote(event.track);
      });
    }
  }
  Hooked.__netlabHooked = true;
  window.RTCPeerConnection = Hooked;
})();
"""

# Records, for the mouth-to-ear figure, what the page's microphone track gave ("local") and what its remote
# audio tracks played ("remote"), each with when: an AudioWorklet tap on each track in one AudioContext
# at 48 kHz sends chunks with the context time of their first sample; the context time is put on
# performance's clock (and from there the epoch, which the lab's namespaces share) with
# getOutputTimestamp. Both ends are tapped the same way, so the tap's own latency cancels out.
_TAP_AUDIO = """
(() => {
  if (window.__netlabTaps) return;
  const taps = (window.__netlabTaps = { local: [], remote: [], errors: [], offsets: [] });
  const WORKLET = `
    class NetlabTap extends AudioWorkletProcessor {
      constructor() { super(); this.parts = []; this.size = 0; this.start = 0; }
      process(inputs) {
        const channel = inputs[0] && inputs[0][0];
        if (!channel) return true;
        if (!this.size) this.start = currentTime;
        this.parts.push(channel.slice());
        this.size += channel.length;
        if (this.size >= 2400) {
          const out = new Int16Array(this.size);
          let at = 0;
          for (const part of this.parts) {
            for (let i = 0; i < part.length; i++) out[at + i] = Math.max(-32768, Math.min(32767, part[i] * 32768));
            at += part.length;
          }
          this.port.postMessage({ start: this.start, samples: out }, [out.buffer]);
          this.parts = []; this.size = 0;
        }
        return true;
      }
    }
    registerProcessor("netlab-tap", NetlabTap);`;
  let context = null;
  let ready = null;
  const start = () => {
    if (ready) return ready;
    context = new AudioContext({ sampleRate: 48000 });
    taps.rate = context.sampleRate;
    const url = URL.createObjectURL(new Blob([WORKLET], { type: "application/javascript" }));
    ready = context.audioWorklet.addModule(url).then(() => context.resume());
    // Context time to epoch milliseconds (the median of the offsets seen).
    setInterval(() => {
      const stamp = context.getOutputTimestamp();
      if (stamp.contextTime > 0) {
        taps.offsets.push(performance.timeOrigin + stamp.performanceTime - stamp.contextTime * 1000);
        if (taps.offsets.length > 600) taps.offsets.shift();
      }
    }, 100);
    return ready;
  };
  const tap = (track, into) => {
    start().then(() => {
      const source = context.createMediaStreamSource(new MediaStream([track]));
      const node = new AudioWorkletNode(context, "netlab-tap");
      const mute = context.createGain();
      mute.gain.value = 0;
      node.port.onmessage = (event) => into.push([event.data.start, event.data.samples]);
      source.connect(node);
      node.connect(mute);
      mute.connect(context.destination);
      track.addEventListener("ended", () => { source.disconnect(); node.disconnect(); });
    }).catch((error) => taps.errors.push(`audio tap: ${error}`));
  };
  window.__netlabTapRemote = (track) => tap(track, taps.remote);
  const devices = navigator.mediaDevices;
  if (devices && devices.getUserMedia) {
    const native = devices.getUserMedia.bind(devices);
    devices.getUserMedia = async (constraints) => {
      // No audio processing, as on the kiosks of the bench: the fake microphone hears no room.
      if (constraints && constraints.audio) {
        const audio = typeof constraints.audio === "object" ? constraints.audio : {};
        constraints = { ...constraints, audio: { ...audio, echoCancellation: false, noiseSuppression: false,
                                                 autoGainControl: false } };
      }
      const stream = await native(constraints);
      for (const track of stream.getAudioTracks()) tap(track, taps.local);
      return stream;
    };
  }
})();
"""

# What the audio taps recorded: per tap, [context time of the chunk's first sample, base64 of its
# little-endian int16 samples] lists; the epoch offset (ms) of the context's clock; the rate.
_TAKE_AUDIO = """
() => {
  const taps = window.__netlabTaps;
  if (!taps) return null;
  const encode = (chunks) => chunks.map(([start, samples]) => {
    const bytes = new Uint8Array(samples.buffer, samples.byteOffset, samples.byteLength);
    let text = "";
    for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
    return [start, btoa(text)];
  });
  const offsets = [...taps.offsets].sort((a, b) => a - b);
  const median = offsets.length ? offsets[Math.floor(offsets.length / 2)] : null;
  return { rate: taps.rate || 48000, offset: median, errors: taps.errors,
           local: encode(taps.local), remote: encode(taps.remote) };
}
"""

# Joins a session by id, as tests/test_web_sfu.py does (no ringing: both pages join the same id).
_JOIN = """
async (sessionId) => {
  const Calls = window.kioskCalls;
  window.__netlabErrors = [];
  const listener = new Calls.OngoingCallListener({
    onError: (error) => window.__netlabErrors.push(`${error.code}: ${error.message}`),
  });
  const settings = new Calls.CallSettingsBuilder().setCallListener(listener).build();
  document.getElementById("lobby").hidden = true;
  document.getElementById("call").hidden = false;
  const token = await Calls.generateToken(sessionId);
  await Calls.startSession(token.token, settings, document.getElementById("call-screen"));
}
"""

# One snapshot per live peer connection: the inbound audio and video counters and the ICE pair.
_SNAPSHOT = """
async () => {
  const out = [];
  for (const pc of window.__netlabPcs || []) {
    if (pc.connectionState === "closed") continue;
    const report = await pc.getStats();
    const snap = { id: pc.__netlabId, state: pc.connectionState, audio: null, video: null, rtt: null,
                   local: null, remote: null };
    report.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") {
        snap.audio = {
          concealedSamples: r.concealedSamples || 0,
          totalSamplesReceived: r.totalSamplesReceived || 0,
          jitterBufferDelay: r.jitterBufferDelay || 0,
          jitterBufferEmittedCount: r.jitterBufferEmittedCount || 0,
          packetsReceived: r.packetsReceived || 0,
          packetsLost: r.packetsLost || 0,
        };
      }
      if (r.type === "inbound-rtp" && r.kind === "video") {
        snap.video = {
          framesDecoded: r.framesDecoded || 0,
          totalFreezesDuration: r.totalFreezesDuration || 0,
          freezeCount: r.freezeCount || 0,
          totalPausesDuration: r.totalPausesDuration || 0,
          pauseCount: r.pauseCount || 0,
          frameWidth: r.frameWidth || 0,
          frameHeight: r.frameHeight || 0,
        };
      }
      if (r.type === "outbound-rtp" && r.kind === "video") {
        snap.sentLimitation = r.qualityLimitationReason || null;
        snap.sentWidth = r.frameWidth || 0;
      }
      if (r.type === "transport" && r.selectedCandidatePairId) {
        const pair = report.get(r.selectedCandidatePairId);
        if (pair) {
          if (pair.currentRoundTripTime !== undefined) snap.rtt = pair.currentRoundTripTime;
          const describe = (id) => {
            const c = id && report.get(id);
            return c ? `${c.address}:${c.port} ${c.candidateType}/${c.relayProtocol || c.protocol}` : null;
          };
          snap.local = describe(pair.localCandidateId);
          snap.remote = describe(pair.remoteCandidateId);
        }
      }
    });
    out.push(snap);
  }
  const frames = (window.__netlabFrames || []).splice(0);
  return { at: performance.now() / 1000, pcs: out, frames,
           errors: [...(window.__netlabErrors || []), ...(window.__netlabFrameErrors || [])] };
}
"""


# --------------------------------------------------------------------------- the page's side


@dataclass
class _Window:
    """Counters of one peer connection over the measured window: its first and latest snapshots."""

    first: dict[str, Any]
    last: dict[str, Any]


@dataclass
class _Received:
    """What one page received over the steady window."""

    windows: dict[int, _Window] = field(default_factory=dict)
    delays_ms: list[float] = field(default_factory=list)
    # Presented video frames in the window: [time, frames it stands for (callbacks skipped)].
    frame_times: list[tuple[float, int]] = field(default_factory=list)
    # Capture (the sender's camera) to presentation of each frame, where Chromium knows the capture time.
    glass_delays_ms: list[float] = field(default_factory=list)
    started_at: float = 0.0
    ended_at: float = 0.0

    def add(self, snapshot: dict[str, Any]) -> None:
        first_snapshot = not self.ended_at
        self.ended_at = float(snapshot["at"])
        for at, count, *delay in snapshot.get("frames", ()):
            if self.started_at <= at <= self.ended_at:
                self.frame_times.append((float(at), int(count)))
                if delay and delay[0] is not None:
                    self.glass_delays_ms.append(float(delay[0]) * 1000)
        for pc in snapshot["pcs"]:
            window = self.windows.get(pc["id"])
            if window is None:
                # A connection made within the window counts from zero; those of the first snapshot
                # from there.
                first = pc if first_snapshot else {"id": pc["id"], "audio": None, "video": None}
                self.windows[pc["id"]] = _Window(first, pc)
                continue
            before, window.last = window.last, pc
            audio, previous = pc.get("audio"), before.get("audio")
            if audio and previous and pc.get("rtt") is not None:
                emitted = audio["jitterBufferEmittedCount"] - previous["jitterBufferEmittedCount"]
                if emitted > 0:
                    buffered = audio["jitterBufferDelay"] - previous["jitterBufferDelay"]
                    self.delays_ms.append(buffered / emitted * 1000 + pc["rtt"] * 1000 / 2)

    def total(self, kind: str, key: str) -> float:
        total = 0.0
        for window in self.windows.values():
            last, first = window.last.get(kind), window.first.get(kind)
            if last:
                total += last[key] - (first[key] if first else 0)
        return total

    def figures(self) -> dict[str, Any]:
        span = self.ended_at - self.started_at
        samples = self.total("audio", "totalSamplesReceived")
        latest = max(self.windows.values(), key=lambda w: w.last["id"], default=None)
        video = latest.last.get("video") if latest else None
        # Frames whose callbacks were skipped (a busy main thread; the compositor still showed them) are
        # spread evenly over the gap before the next callback, so that they count as shown, not frozen.
        presented = sorted(self.frame_times)
        times = [at for at, _ in presented[:1]]
        for (before, _), (at, n) in zip(presented, presented[1:], strict=False):
            times += [before + (at - before) * k / n for k in range(1, n + 1)]
        frames = FreezeMeter()  # the kiosk's rule, on the presented frames' times
        for at in times:
            frames.frame(at)
        return {
            "span": span,
            "audio_concealed_share": self.total("audio", "concealedSamples") / samples if samples else None,
            "audio_packets_received": self.total("audio", "packetsReceived"),
            "audio_packets_lost": self.total("audio", "packetsLost"),
            "audio_delay_ms_p50": _percentile(self.delays_ms, 50),
            "audio_delay_ms_p95": _percentile(self.delays_ms, 95),
            "video_freeze_share": frames.freeze_share if frames.frames >= 2 else None,
            "video_delay_ms_p50": _percentile(self.glass_delays_ms, 50),
            "video_delay_ms_p95": _percentile(self.glass_delays_ms, 95),
            "video_delays_known": len(self.glass_delays_ms),
            "video_freezes": frames.freeze_count,
            "video_freeze_seconds": frames.freeze_seconds,
            "video_fps": frames.frames_per_second if frames.frames >= 2 else None,
            "video_fps_callbacks": (len(presented) - 1) / frames.span if frames.span > 0 else None,
            "video_frames_presented": frames.frames,
            "video_fps_decoded": self.total("video", "framesDecoded") / span if span > 0 else None,
            "chromium_freezes": self.total("video", "freezeCount"),
            "chromium_freeze_seconds": self.total("video", "totalFreezesDuration"),
            "chromium_pauses": self.total("video", "pauseCount"),
            "chromium_pause_seconds": self.total("video", "totalPausesDuration"),
            "video_gaps": [
                [round(later - self.started_at, 2), round(later - earlier, 3)]
                for earlier, later in zip(times, times[1:], strict=False)
                if later - earlier > 0.15
            ],
            "video_width": video["frameWidth"] if video else None,
            "peer_connections": len(self.windows),
            "sent_video": f"{latest.last.get('sentWidth')} wide, limited by {latest.last.get('sentLimitation')}"
            if latest
            else None,
            "ice": f"{latest.last.get('local')} -> {latest.last.get('remote')}" if latest else None,
        }


def _percentile(values: Sequence[float], percent: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def _media_flowing(snapshot: dict[str, Any]) -> bool:
    for pc in snapshot["pcs"]:
        audio, video = pc.get("audio"), pc.get("video")
        if audio and audio["totalSamplesReceived"] > 0 and video and video["framesDecoded"] > 0:
            return True
    return False


async def drive_page(
    server: str,
    token: str,
    session_id: str,
    seconds: float,
    wav: Path | None,
    lab_zero: float | None = None,
    audio_dir: Path | None = None,
) -> dict[str, Any]:
    """One page: open the app, join `session_id`, measure `seconds` of media; the result as a dict.
    Stays in the call afterwards until stdin closes. `lab_zero`: time.monotonic() when the lab's clock
    started (the profile's blackouts count from there), to say when the window was on that clock."""
    from playwright.async_api import async_playwright

    # The app is served from the lab's plain-http address, not localhost: without this, the page is
    # not a secure context and has no navigator.mediaDevices.
    args = [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={server}"]
    if wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={wav}")
    warmup = min(WARMUP_SECONDS, seconds / 4)
    page_errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args, headless=True, timeout=30_000)
        try:
            # The page's CSP allows no blob: script, which the measuring taps' AudioWorklet is: the
            # bench's own instrument, so the CSP is bypassed for it (the browser tests run the page
            # under its CSP).
            page: Any = await browser.new_page(bypass_csp=True)
            page.set_default_timeout(30_000)
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            await page.add_init_script(_HOOK_PEER_CONNECTIONS)
            if audio_dir is not None:
                await page.add_init_script(_TAP_AUDIO)
            await page.goto(f"{server}/app/?token={token}")
            await page.locator("#lobby").wait_for()
            await page.evaluate(_JOIN, session_id)

            deadline = time.monotonic() + MEDIA_START_TIMEOUT
            while not _media_flowing(snapshot := await page.evaluate(_SNAPSHOT)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no media within {MEDIA_START_TIMEOUT} s; last stats: {snapshot}")
                await asyncio.sleep(0.1)
            media_at = time.monotonic()
            await asyncio.sleep(warmup)
            received = _Received()
            snapshot = await page.evaluate(_SNAPSHOT)
            received.started_at = float(snapshot["at"])
            window_from = time.monotonic()
            received.add(snapshot)
            while time.monotonic() < media_at + seconds:
                await asyncio.sleep(POLL_SECONDS)
                snapshot = await page.evaluate(_SNAPSHOT)
                received.add(snapshot)
            result = received.figures()
            if audio_dir is not None:
                taken = await page.evaluate(_TAKE_AUDIO)
                result["audio_tap_errors"] = save_taps(taken, audio_dir)
            if lab_zero is not None:
                result["window_lab"] = [window_from - lab_zero, time.monotonic() - lab_zero]
            result["errors"] = [*snapshot["errors"], *page_errors]
            print(json.dumps(result), flush=True)
            print(f"video gaps > 150 ms [s into the window, gap s]: {result['video_gaps']}", file=sys.stderr)
            await _stdin_closed()
            await page.evaluate("() => window.kioskCalls.endSession()")
        finally:
            await browser.close()
    return result


def save_taps(taken: dict[str, Any] | None, directory: Path) -> list[str]:
    """What the page's audio taps recorded, as the emulated devices save theirs: `<tap>.wav` (mono int16)
    and `<tap>.clock.json` (epoch seconds: the lab's namespaces share the clock). Returns the taps'
    errors."""
    if not taken or taken.get("offset") is None:
        return ["the audio taps recorded nothing" + (f": {taken['errors']}" if taken else "")]
    directory.mkdir(parents=True, exist_ok=True)
    rate = int(taken["rate"])
    for name in ("local", "remote"):
        clock = SampleClock(rate)
        parts: list[bytes] = []
        count = 0
        for start, encoded in taken[name]:
            samples = base64.b64decode(encoded)
            clock.mark((float(taken["offset"]) + float(start) * 1000) / 1000, count)
            parts.append(samples)
            count += len(samples) // 2
        with wave.open(str(directory / f"{name}.wav"), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(b"".join(parts))
        clock.save(directory / f"{name}.clock.json")
    return list(taken.get("errors") or [])


def tapped_delays(
    listener_dir: Path, talker_dir: Path, skip_seconds: float, voice: np.ndarray
) -> list[float]:
    """Mouth-to-ear delays (s) of the talker's voice (the loop `voice`) at the listener, from the pages'
    saved taps: the talker's microphone recording gives its production clock (`production_clock`),
    the listener's remote recording what it played and when; the first `skip_seconds` played are
    left out."""

    def read(path: Path) -> tuple[np.ndarray, SampleClock]:
        with wave.open(str(path)) as recorded:
            samples = np.frombuffer(recorded.readframes(recorded.getnframes()), np.int16)
        return samples, SampleClock.load(path.with_suffix(".clock.json"))

    if not (listener_dir / "remote.wav").exists() or not (talker_dir / "local.wav").exists():
        return []
    spoken, spoken_clock = read(talker_dir / "local.wav")
    played, played_clock = read(listener_dir / "remote.wav")
    skip = int(skip_seconds * played_clock.rate)
    kept = SampleClock(played_clock.rate, [(t, n - skip) for t, n in played_clock.points if n >= skip])
    return delays(played[skip:], kept, voice, production_clock(spoken, spoken_clock, voice))


async def _stdin_closed() -> None:
    """Returns once stdin reaches its end (the orchestrator closed it, or went away)."""
    loop = asyncio.get_running_loop()
    closed = asyncio.Event()

    def read() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(closed.set)

    threading.Thread(target=read, daemon=True).start()
    await closed.wait()


# --------------------------------------------------------------------------- the orchestrator


def write_voice_wav(path: Path, voice: np.ndarray | None = None) -> Path:
    """A synthetic voice (kiosk.media.emulated.speech_like_voice unless given) as a WAV, for Chromium's
    fake microphone or an emulated one, which loop it."""
    from kiosk.media.devices import AUDIO_SAMPLE_RATE
    from kiosk.media.emulated import speech_like_voice

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(AUDIO_SAMPLE_RATE)
        out.writeframes((speech_like_voice() if voice is None else voice).tobytes())
    return path


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_result(proc: subprocess.Popen[str], into: dict[str, Any]) -> None:
    """The first JSON line a page driver prints."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{"):
            into.update(json.loads(line))
            return


def run_chromium_pair(
    workdir: Path, profile: Profile, seconds: float = 30.0, seed: int = 0
) -> list[PairQuality]:
    """Two Chromium pages in a call through the lab with `profile`, measured for `seconds` of media.
    Returns what the page in b received from a, then what the page in a received from b."""
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "server-data"
    tokens = {side: add_user(data, uid) for side, uid in USERS.items()}
    # Side b speaks the second voice: each direction is told from the other, and neither page's echo
    # canceller takes the other's voice for its own echo.
    voices = {"a": speech_like_voice(), "b": second_voice()}
    wavs = {side: write_voice_wav(workdir / f"voice-{side}.wav", voice) for side, voice in voices.items()}
    server_url = f"http://{address('s')}:{SERVER_PORT}"
    session_id = "netlab-" + uuid.uuid4().hex[:12]
    procs: list[subprocess.Popen[Any]] = []
    results: dict[str, dict[str, Any]] = {"a": {}, "b": {}}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with Lab(profile, workdir / "lab", seed=seed) as lab:
        try:
            server_cmd = [sys.executable, "-m", "kiosk.cli", "server", "--host", address("s")]
            server_cmd += ["--port", str(SERVER_PORT), "--data-dir", str(data), "--admin-key", ADMIN_KEY]
            server_env: list[str] = []
            if profile.needs_turn_over_tcp:
                procs.append(start_coturn(lab, workdir))
                wait_for_port(lab, "s", address("s"), TURN_PORT, "coturn")
                for transport in ("udp", "tcp"):  # as a real server offers them: UDP first
                    server_cmd += ["--turn-url", f"turn:{address('s')}:{TURN_PORT}?transport={transport}"]
                server_env = [f"KIOSK_TURN_SECRET={TURN_SECRET}"]
            with open(workdir / "server.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        lab.command("s", ["env", *server_env, *server_cmd]),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=ROOT,
                    )
                )
            wait_for_port(lab, "a", address("s"), SERVER_PORT, "the call server")

            drivers: dict[str, subprocess.Popen[str]] = {}
            for side in ("b", "a"):
                driver = [sys.executable, "-m", "bench.netlab_chromium", "page", "--server", server_url]
                driver += ["--token", tokens[side], "--session", session_id, "--seconds", str(seconds)]
                driver += ["--wav", str(wavs[side]), "--lab-zero", repr(time.monotonic() - lab.seconds())]
                driver += ["--audio-dir", str(workdir / "audio" / side)]
                with open(workdir / f"page-{side}.log", "w") as log:
                    drivers[side] = subprocess.Popen(
                        lab.command(side, driver),
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        text=True,
                        cwd=ROOT,
                        env=env,
                    )
                procs.append(drivers[side])
            readers = [
                threading.Thread(target=_read_result, args=(drivers[side], results[side]), daemon=True)
                for side in drivers
            ]
            for reader in readers:
                reader.start()
            deadline = time.monotonic() + seconds + MEDIA_START_TIMEOUT + 60
            for reader in readers:
                reader.join(max(0.0, deadline - time.monotonic()))
            for driver_proc in drivers.values():  # both measured: now they may leave
                assert driver_proc.stdin is not None
                driver_proc.stdin.close()
            for driver_proc in drivers.values():
                try:
                    driver_proc.wait(20)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            for proc in reversed(procs):
                _stop(proc)
    for side, got in results.items():
        if not got:
            log_text = (workdir / f"page-{side}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the page in {side} gave no result; its log:\n{log_text}")
    qualities = [
        _quality(profile, results["b"], results["a"], "b (other side) received from a (kiosk's side)"),
        _quality(profile, results["a"], results["b"], "a (kiosk's side) received from b (other side)"),
    ]
    audio = workdir / "audio"
    for quality, listener, talker in ((qualities[0], "b", "a"), (qualities[1], "a", "b")):
        found = tapped_delays(audio / listener, audio / talker, WARMUP_SECONDS, voices[talker])
        if found:
            quality.audio_delay_ms_p50, quality.audio_delay_ms_p95 = percentiles(found)
            quality.figures["mouth_to_ear_windows"] = float(len(found))
            quality.note = quality.note.replace(ESTIMATED, MEASURED)
        else:
            quality.note += "; no mouth-to-ear windows matched the voice: the estimate is kept"
        remote = audio / listener / "remote.wav"
        add_speech_quality(quality, remote if remote.exists() else None, WARMUP_SECONDS, voices[talker])
        errors = results[listener].get("audio_tap_errors")
        if errors:
            quality.note += f"; audio taps: {'; '.join(errors)[:200]}"
    return qualities


ESTIMATED = "delay estimated from getStats (jitter buffer + RTT/2)"
MEASURED = "delay measured from the audio (microphone track to played remote track, both tapped in the page)"


def _quality(profile: Profile, got: dict[str, Any], sender: dict[str, Any], direction: str) -> PairQuality:
    lab = got.get("window_lab")
    window_lab = f" (lab clock {lab[0]:.1f}-{lab[1]:.1f} s)" if lab else ""
    note = (
        f"{direction}; {ESTIMATED}; "
        f"sender's video at the end: {sender.get('sent_video')}; "
        f"window {got['span']:.1f} s{window_lab}; audio packets {got['audio_packets_received']:.0f} "
        f"received, {got['audio_packets_lost']:.0f} lost; video: {got['video_frames_presented']} frames "
        f"presented ({got['video_fps_callbacks'] or 0:.1f} fps of frame callbacks), {got['video_freezes']} freezes ({got['video_freeze_seconds']:.2f} s) by the kiosk's rule, "
        f"{got['video_fps_decoded'] or 0:.1f} fps decoded; chromium's own counter: "
        f"{got['chromium_freezes']:.0f} freezes ({got['chromium_freeze_seconds']:.2f} s), "
        f"{got['chromium_pauses']:.0f} pauses ({got['chromium_pause_seconds']:.2f} s); "
        f"{got['peer_connections']} peer connection(s); ICE {got['ice']}"
    )
    if got.get("errors"):
        note += f"; page errors: {'; '.join(got['errors'])[:300]}"
    width = got.get("video_width")
    return PairQuality(
        pair="chromium",
        profile=profile.name,
        audio_concealed_share=got.get("audio_concealed_share"),
        audio_delay_ms_p50=got.get("audio_delay_ms_p50"),
        audio_delay_ms_p95=got.get("audio_delay_ms_p95"),
        video_freeze_share=got.get("video_freeze_share"),
        video_delay_ms_p95=got.get("video_delay_ms_p95"),
        video_fps=got.get("video_fps"),
        video_width=int(width) if width else None,
        note=note,
    )


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.netlab_chromium", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="clean")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="kept (default: a temporary one, removed)")
    sub = parser.add_subparsers(dest="command")
    page = sub.add_parser("page", help="drive one page (run by the orchestrator inside a namespace)")
    page.add_argument("--server", required=True)
    page.add_argument("--token", required=True)
    page.add_argument("--session", required=True)
    page.add_argument("--seconds", type=float, required=True)
    page.add_argument("--wav", type=Path, default=None)
    page.add_argument("--lab-zero", type=float, default=None, help="time.monotonic() at the lab clock's 0")
    page.add_argument("--audio-dir", type=Path, default=None, help="where to save the audio taps' recordings")
    args = parser.parse_args(argv)

    if args.command == "page":
        asyncio.run(
            drive_page(
                args.server, args.token, args.session, args.seconds, args.wav, args.lab_zero, args.audio_dir
            )
        )
        return 0

    workdir = args.workdir
    if workdir is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="netlab-chromium-") as tmp:
            results = run_chromium_pair(Path(tmp), profile(args.profile), args.seconds, args.seed)
    else:
        results = run_chromium_pair(workdir, profile(args.profile), args.seconds, args.seed)
    for result in results:
        print(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
