"""A call between two bare aiortc peers through the network lab (kiosk/netlab): the reference for what
aiortc alone does over an impaired path, to compare with the kiosk's own endpoints and with Chromium.

    results = run_aiortc_pair(tmp_path, profile("wifi"), seconds=20)
    python -m bench.netlab_aiortc --profile wifi --seconds 20      # as root: JSON lines

Two processes of this file (`python -m bench.netlab_aiortc peer ...`), one in the lab's namespace "a"
(the impaired side, the offerer) and one in "b" (the answerer), each with aiortc's defaults (no
STUN server, nothing of the kiosk's session or playout code) sending the emulated camera (640x480,
30 fps, VP8, the default) and microphone sendrecv (bench.bare.SourceTrack). Signaling is two files
in a shared directory (the namespaces share the filesystem): offer.sdp and answer.sdp, each written
once gathering is complete, as aiortc does no trickle ICE.

What each receiver records (kiosk.netlab.quality's figures):

- video: the arrival of every decoded frame (freeze share, frames per second) and its capture
  stamp's age (kiosk.media.pattern.read_stamp): glass-to-glass, since the namespaces share a clock;
- audio: aiortc's audio track hands out frames only when its jitter buffer releases them, while a
  sound card plays every 20 ms. So a 20 ms playout clock takes the next received frame if one is
  ready; a tick with none ready (after the first frame) is concealed. Its queue is bounded: past
  AUDIO_QUEUE_FRAMES the oldest frame is dropped, as a playout with a bounded buffer would.

Everything is measured from WARMUP seconds after the first media to the end of the call. The
profile "udp-blocked" needs TURN over TCP: coturn (Debian's) is started in the server namespace and
both peers are given `turn:10.77.3.2:443?transport=tcp`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bench.bare import SourceTrack
from bench.netlab_chromium import write_voice_wav
from kiosk.media.emulated import EmulatedDevices, second_voice, speech_like_voice
from kiosk.media.pattern import latency_ms, read_stamp
from kiosk.media.sample_clock import SampleClock
from kiosk.netlab.call import TURN_SECRET, TURN_TCP_PORT, start_coturn, wait_for_port
from kiosk.netlab.lab import Lab, address
from kiosk.netlab.mouth_to_ear import delays_between, percentiles
from kiosk.netlab.profiles import Profile
from kiosk.netlab.profiles import profile as named_profile
from kiosk.netlab.quality import PairQuality, frames_per_second, freeze_share
from kiosk.netlab.speech_quality import add_speech_quality

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT, FPS = 640, 480, 30
WARMUP = 3.0  # seconds after the first media that are not measured
PLAYOUT_TICK = 0.020  # a sound card's period
AUDIO_QUEUE_FRAMES = 10  # the playout's buffer: past this, the oldest frame is dropped
CONNECT_TIMEOUT = 30.0
GRACE = 2.0  # seconds a peer keeps its connection open after it stopped measuring
TURN_PORT = TURN_TCP_PORT


# ----------------------------------------------------------------------------- the receiver


@dataclass
class Recorder:
    """What one peer receives: video arrivals and stamp delays, and the audio playout's ticks."""

    first_media: float | None = None  # time.monotonic() of the first frame, audio or video
    stopped_at: float | None = None
    video: list[tuple[float, float | None, int]] = field(default_factory=list)  # (at, delay ms, width)
    ticks: list[tuple[float, bool]] = field(default_factory=list)  # (at, played)
    audio_frames: int = 0
    audio_dropped: list[float] = field(default_factory=list)  # when the full queue dropped a frame
    audio_frame_ms: set[float] = field(default_factory=set)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._queue: collections.deque[av.AudioFrame] = collections.deque()
        self._audio_started = asyncio.Event()
        # What the playout played (first channel) and when, for the mouth-to-ear figure.
        self.played: list[np.ndarray] = []
        self.played_clock = SampleClock(48000)
        self._played_samples = 0

    def on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            self.tasks.append(asyncio.ensure_future(self._video(track)))
        else:
            self.tasks.append(asyncio.ensure_future(self._audio(track)))
            self.tasks.append(asyncio.ensure_future(self._playout()))

    def _media(self, now: float) -> bool:
        """Notes the first media; False once measuring has stopped."""
        if self.first_media is None:
            self.first_media = now
        return self.stopped_at is None

    async def _video(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if not isinstance(frame, av.VideoFrame) or not self._media(now):
                continue
            stamp = read_stamp(frame)
            delay = float(latency_ms(stamp)) if stamp is not None else None
            self.video.append((now, delay, frame.width))

    async def _audio(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if not isinstance(frame, av.AudioFrame) or not self._media(now):
                continue
            self.audio_frames += 1
            self.audio_frame_ms.add(round(1000 * frame.samples / frame.sample_rate, 1))
            self._queue.append(frame)
            if len(self._queue) > AUDIO_QUEUE_FRAMES:
                self._queue.popleft()
                self.audio_dropped.append(now)
            self._audio_started.set()

    async def _playout(self) -> None:
        """A sound card's clock: every 20 ms the next frame, if one is ready. Ticks the loop was too
        busy to run on time are run at once (a card would have consumed them all the same)."""
        await self._audio_started.wait()
        start = time.monotonic()
        n = 0
        while self.stopped_at is None:
            n += 1
            due = start + n * PLAYOUT_TICK
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stopped_at is not None:
                return
            played = bool(self._queue)
            if played:
                frame = self._queue.popleft()
                samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                self.played_clock.rate = frame.sample_rate
                self.played_clock.mark(time.monotonic(), self._played_samples)
                self.played.append(samples.astype(np.int16))
                self._played_samples += len(samples)
            self.ticks.append((due, played))

    def stop(self) -> None:
        self.stopped_at = time.monotonic()

    def save_played(self, directory: Path) -> None:
        """As the emulated speaker saves it: `<directory>/playout/peer.wav` and its clock."""
        folder = directory / "playout"
        folder.mkdir(parents=True, exist_ok=True)
        with wave.open(str(folder / "peer.wav"), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self.played_clock.rate)
            out.writeframes(np.concatenate(self.played).tobytes() if self.played else b"")
        self.played_clock.save(folder / "peer.clock.json")

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def figures(self) -> dict[str, Any]:
        """The measured window's figures, JSON-ready."""
        end = self.stopped_at or time.monotonic()
        if self.first_media is None:
            return {"error": "no media received", "window_s": 0.0}
        begin = self.first_media + WARMUP
        video = [(at, d, w) for at, d, w in self.video if begin <= at <= end]
        arrivals = [at for at, _, _ in video]
        delays = [d for _, d, _ in video if d is not None]
        ticks = [played for at, played in self.ticks if begin <= at <= end]
        widths = collections.Counter(w for _, _, w in video)
        return {
            "window_s": round(end - begin, 3),
            "audio_ticks": len(ticks),
            "audio_concealed_ticks": ticks.count(False),
            "audio_concealed_share": ticks.count(False) / len(ticks) if ticks else None,
            "audio_frames_received": self.audio_frames,
            "audio_frames_dropped": sum(1 for at in self.audio_dropped if begin <= at <= end),
            "audio_frame_ms": sorted(self.audio_frame_ms),
            "video_frames": len(video),
            "video_stamped": len(delays),
            "video_freeze_share": freeze_share(arrivals) if len(arrivals) >= 3 else None,
            "video_fps": frames_per_second(arrivals) if len(arrivals) >= 2 else None,
            "video_delay_ms_p50": float(statistics.median(delays)) if delays else None,
            "video_delay_ms_p95": _p95(delays),
            "video_width": widths.most_common(1)[0][0] if widths else None,
        }


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    if len(values) < 2:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[94])


# ----------------------------------------------------------------------------- one peer (a process)


def _write_atomic(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)


def _read_if_written(path: Path) -> str | None:
    # A few hundred bytes, written with a rename: reading them does not hold the loop up.
    return path.read_text() if path.exists() else None


async def _wait_file(path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while (text := _read_if_written(path)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path.name} after {timeout} s")
        await asyncio.sleep(0.02)
    return text


async def _wait_connected(pc: RTCPeerConnection, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pc.connectionState != "connected":
        if pc.connectionState in ("failed", "closed"):
            raise RuntimeError(f"the peer connection {pc.connectionState}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not connected after {timeout} s ({pc.connectionState})")
        await asyncio.sleep(0.02)


async def run_peer(
    role: str,
    signal_dir: Path,
    seconds: float,
    out: Path,
    ice_servers: list[RTCIceServer],
    sound_file: Path | None = None,
) -> dict[str, Any]:
    """One side of the call: `seconds` from connected, then its figures written to `out`."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers))  # [] : no public STUN server
    # Its microphone (the synthetic voice, or `sound_file`) saves when it spoke beside what this side
    # played.
    devices = EmulatedDevices(
        width=WIDTH, height=HEIGHT, fps=FPS, speaker_dir=audio_dir(out), sound_file=sound_file
    )
    audio = SourceTrack("audio", devices.open_microphone("emulated-mic"))
    video = SourceTrack("video", devices.open_camera("emulated-camera-front"))
    recorder = Recorder()
    pc.on("track", recorder.on_track)
    started = time.monotonic()
    try:
        if role == "offer":
            pc.addTransceiver(audio, direction="sendrecv")
            pc.addTransceiver(video, direction="sendrecv")
            await pc.setLocalDescription(await pc.createOffer())  # returns once gathering is complete
            _write_atomic(signal_dir / "offer.sdp", pc.localDescription.sdp)
            answer = await _wait_file(signal_dir / "answer.sdp", CONNECT_TIMEOUT)
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        else:
            offer = await _wait_file(signal_dir / "offer.sdp", CONNECT_TIMEOUT)
            await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            pc.addTrack(audio)
            pc.addTrack(video)
            await pc.setLocalDescription(await pc.createAnswer())
            _write_atomic(signal_dir / "answer.sdp", pc.localDescription.sdp)
        await _wait_connected(pc, CONNECT_TIMEOUT)
        connected = time.monotonic()
        await asyncio.sleep(seconds)
        recorder.stop()
        recorder.save_played(audio_dir(out))
        figures = recorder.figures()
        figures.update(role=role, connect_s=round(connected - started, 3))
        _write_atomic(out, json.dumps(figures))
        await asyncio.sleep(GRACE)  # the other side stops measuring before it sees this one leave
        return figures
    finally:
        audio.stop()
        video.stop()
        await recorder.close()
        await pc.close()


# ----------------------------------------------------------------------------- the pair, in the lab


def _turn_credentials(user: str) -> tuple[str, str]:
    """coturn's use-auth-secret (TURN REST) credentials: "expiry:user", base64(HMAC-SHA1)."""
    username = f"{int(time.time()) + 3600}:{user}"
    digest = hmac.new(TURN_SECRET.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def audio_dir(out: Path) -> Path:
    """Where a peer writing its figures to `out` keeps its played audio and its microphone's clock."""
    return out.with_name(f"{out.stem}-audio")


def _quality(profile: Profile, figures: dict[str, Any], note: str) -> PairQuality:
    extra = (
        f"{figures['video_frames']} frames ({figures['video_stamped']} stamped),"
        f" {figures['audio_ticks']} playout ticks, {figures['audio_frames_dropped']} audio frames"
        f" dropped from a full queue, window {figures['window_s']} s,"
        f" glass-to-glass p50 {figures['video_delay_ms_p50']} ms"
    )
    return PairQuality(
        pair="aiortc",
        profile=profile.name,
        audio_concealed_share=figures["audio_concealed_share"],
        video_freeze_share=figures["video_freeze_share"],
        video_fps=figures["video_fps"],
        video_delay_ms_p95=figures["video_delay_ms_p95"],
        video_width=figures["video_width"],
        note=f"{note}; {extra}",
    )


def run_aiortc_pair(
    workdir: Path, profile: Profile, seconds: float = 30.0, seed: int = 0
) -> list[PairQuality]:
    """Bare aiortc in ns a (the impaired side, offering) and ns b for `seconds` through the lab: what b
    received from a, then what a received from b. Needs root, as the lab does."""
    workdir.mkdir(parents=True, exist_ok=True)
    signal_dir = workdir / "signal"
    shutil.rmtree(signal_dir, ignore_errors=True)
    signal_dir.mkdir()
    outs = {side: workdir / f"peer-{side}.json" for side in ("a", "b")}
    logs = {side: workdir / f"peer-{side}.log" for side in ("a", "b")}
    for path in outs.values():
        path.unlink(missing_ok=True)
    # b speaks the second voice, so that each direction is told from the other.
    voices = {"a": speech_like_voice(), "b": second_voice()}
    second_voice_wav = write_voice_wav(workdir / "voice-b.wav", voices["b"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs: list[subprocess.Popen[bytes]] = []
    with Lab(profile, workdir / "lab", seed=seed) as lab:
        try:
            turn: list[str] = []
            if profile.needs_turn_over_tcp:
                procs.append(start_coturn(lab, workdir))
                wait_for_port(lab, "a", address("s"), TURN_PORT, "coturn")
                username, password = _turn_credentials("aiortc")
                turn = [
                    "--turn-url",
                    f"turn:{address('s')}:{TURN_PORT}?transport=tcp",
                    "--turn-username",
                    username,
                    "--turn-password",
                    password,
                ]
            peers: dict[str, subprocess.Popen[bytes]] = {}
            for side, role in (("b", "answer"), ("a", "offer")):
                argv = [sys.executable, "-m", "bench.netlab_aiortc", "peer", "--role", role]
                argv += ["--dir", str(signal_dir), "--seconds", str(seconds), "--out", str(outs[side]), *turn]
                if side == "b":
                    argv += ["--sound-file", str(second_voice_wav)]
                with open(logs[side], "wb") as log:
                    peers[side] = subprocess.Popen(
                        lab.command(side, argv), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env
                    )
                procs.append(peers[side])
            deadline = time.monotonic() + seconds + 2 * CONNECT_TIMEOUT + GRACE + 30
            for proc in peers.values():
                try:
                    proc.wait(max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        finally:
            for proc in procs:
                _stop(proc)
    figures: dict[str, dict[str, Any]] = {}
    for side in ("a", "b"):
        if not outs[side].exists():
            raise RuntimeError(f"peer {side} wrote no figures; its log:\n{_tail(logs[side])}")
        figures[side] = json.loads(outs[side].read_text())
        if "error" in figures[side]:
            raise RuntimeError(f"peer {side}: {figures[side]['error']}; its log:\n{_tail(logs[side])}")
    found = [
        _quality(profile, figures["b"], "received by b (the clean side) from a (the impaired side)"),
        _quality(profile, figures["a"], "received by a (the impaired side) from b (the clean side)"),
    ]
    for quality, listener, talker in zip(found, ("b", "a"), ("a", "b"), strict=True):
        voice = voices[talker]
        heard = delays_between(audio_dir(outs[listener]), "peer", audio_dir(outs[talker]), WARMUP, voice)
        if heard:
            quality.audio_delay_ms_p50, quality.audio_delay_ms_p95 = percentiles(heard)
            quality.figures["mouth_to_ear_windows"] = float(len(heard))
        add_speech_quality(quality, next(audio_dir(outs[listener]).glob("*/peer.wav"), None), WARMUP, voice)
    return found


# ----------------------------------------------------------------------------- command line


def _peer_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netlab_aiortc peer")
    parser.add_argument("--role", choices=("offer", "answer"), required=True)
    parser.add_argument("--dir", type=Path, required=True, help="the shared signaling directory")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--turn-url")
    parser.add_argument("--turn-username")
    parser.add_argument("--turn-password")
    parser.add_argument("--sound-file", type=Path, help="what the microphone loops (default: the voice)")
    args = parser.parse_args(argv)
    servers = []
    if args.turn_url:
        servers.append(
            RTCIceServer(urls=args.turn_url, username=args.turn_username, credential=args.turn_password)
        )
    asyncio.run(run_peer(args.role, args.dir, args.seconds, args.out, servers, args.sound_file))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["peer"]:
        return _peer_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m bench.netlab_aiortc",
        description="a bare aiortc call through the network lab (needs root); JSON lines out",
    )
    parser.add_argument("--profile", default="clean")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="kept after the run (default: a temp dir)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="netlab-aiortc-"))
        )
        for quality in run_aiortc_pair(workdir, named_profile(args.profile), args.seconds, args.seed):
            print(json.dumps(quality.to_json()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
