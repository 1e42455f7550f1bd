"""An adaptive audio playout buffer: one remote participant's Opus packets in, one 20 ms frame out at
every tick of a playout clock, whatever the network did.

aiortc's own audio buffer holds a fixed four frames and, when a packet is lost, waits until sixteen
have piled up behind the gap before it gives anything again: a lost packet on Wi-Fi is a third of a
second of silence. This buffer (a much smaller cousin of WebRTC's NetEQ):

- plays a frame every 20 ms from the packet that is due; when it is missing but the next one is
  there, rebuilds it from that packet's in-band FEC, else conceals it (Opus' packet-loss
  concealment), and moves on: a lost packet costs 20 ms of concealment, never a stall;
- when nothing newer than the due packet has come (the network is late, not lossy), conceals in
  place ("expands") without moving on, so the late packet is still played when it comes, and the
  buffer has grown by a frame;
- keeps a target delay from the arrival times: enough to hold back the 97th percentile of the last
  few seconds' delay variation, at least one frame and at most MAX_DELAY; when its level (smoothed
  over LEVEL_SECONDS: under jitter the instant level swings with every packet's delay) is under the
  target it grows by playing a received packet stretched to twice its length, a pitch period
  repeated ("stretched", at most one every GROW_EVERY; real audio, as NetEQ's preemptive expand, so
  not counted as concealment), when it is over it drops a frame to shrink ("accelerates", at most one
  every ACCELERATE_EVERY);
- when nothing at all has come for SILENCE_AFTER_SECONDS (the sender stopped, or the network is
  gone), plays silence instead of concealment, whose hiss never fades;
- after a long gap (a network blackout) starts over from the newest packet rather than play seconds
  of the past; a packet whose timestamp is a minute or more from the newest, either way, is a new
  stream (a rebuilt connection's new timestamp base): it starts over from that packet.

Every frame it plays is counted by kind, so the share concealed is known as Chromium's
concealedSamples / totalSamplesReceived is.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import av
import numpy as np

from kiosk.media.opus import FRAME_SAMPLES, SAMPLE_RATE, OpusDecoder, OpusError, has_fec

log = logging.getLogger(__name__)

FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
MIN_DELAY = FRAME_SECONDS  # one frame: the least a playout clock can hold
MAX_DELAY = 0.5
DELAY_WINDOW_SECONDS = 3.0  # the arrivals the target is computed from
TARGET_QUANTILE = 0.97
SHRINK_EVERY = 1.0  # the target falls by at most a frame per second (it rises at once)
ACCELERATE_EVERY = 0.1  # at most one frame dropped per this many seconds to shrink the buffer
GROW_EVERY = 0.06  # at most one frame concealed in place per this many seconds to grow it
LEVEL_SECONDS = 1.0  # the time constant of the buffer level the grow and shrink decisions use
LEVEL_SMOOTHING = FRAME_SECONDS / LEVEL_SECONDS
SILENCE_AFTER_SECONDS = 0.3  # nothing received for this long: play silence, not concealment
RESET_AFTER_FRAMES = 50  # a second behind the newest packet: start over from it
NEW_STREAM_FRAMES = 3000  # a packet a minute from the newest belongs to another stream
_TIMESTAMP_WRAP = 1 << 32


class FrameKind(StrEnum):
    NORMAL = "normal"
    RECOVERED = "recovered"  # from the next packet's FEC
    CONCEALED = "concealed"  # PLC for a packet that was lost
    EXPANDED = "expanded"  # PLC while waiting for a late packet (the buffer grows)
    STRETCHED = "stretched"  # a received packet's audio played longer, to grow the buffer
    SILENT = "silent"  # nothing received yet


@dataclass
class PlayoutStats:
    frames: int = 0
    normal: int = 0
    recovered: int = 0
    concealed: int = 0
    expanded: int = 0
    stretched: int = 0
    silent: int = 0
    late: int = 0  # packets that came after their time had passed
    duplicates: int = 0
    accelerated: int = 0  # frames dropped to shrink the buffer
    resets: int = 0
    new_streams: int = 0  # the timestamps jumped (a rebuilt connection): started over
    target_delay: float = MIN_DELAY
    max_target_delay: float = MIN_DELAY
    buffered: float = 0.0  # seconds of audio held now

    @property
    def concealed_share(self) -> float:
        """The share of playout that was not the sender's own audio (as Chromium counts)."""
        played = self.frames - self.silent
        return (self.concealed + self.expanded) / played if played else 0.0

    def to_json(self) -> dict[str, float | int]:
        data: dict[str, float | int] = dict(vars(self))
        data["concealed_share"] = self.concealed_share
        return data


STRETCH_CROSSFADE = 120  # 2.5 ms
MIN_PITCH, MAX_PITCH = 120, FRAME_SAMPLES // 2  # 2.5-10 ms: voice's pitch periods (400-100 Hz)


def stretch(pcm: np.ndarray, channels: int) -> np.ndarray:
    """20 ms of interleaved int16 as 40 ms: the waveform's pitch period before the middle (the lag at
    which the sound is most like itself) repeated there until the frame is twice as long, joined to the second half with a short crossfade. Repeating
    whole periods of the sound itself, as WebRTC's NetEQ stretches to grow its buffer, keeps pitch and
    timbre (a resampler would lower the pitch by an octave)."""
    x = pcm.reshape(-1, channels).astype(np.float32)
    n = x.shape[0]
    mono = x.mean(axis=1)
    middle = n // 2
    best, best_score = MAX_PITCH, -1.0
    for lag in range(MIN_PITCH, MAX_PITCH + 1):
        # How alike the period before the middle is to the one after it.
        a, b = mono[middle - lag : middle], mono[middle : middle + lag]
        energy = float(np.sqrt((a @ a) * (b @ b)))
        score = float(a @ b) / energy if energy > 0 else 0.0
        if score > best_score:
            best, best_score = lag, score
    period = x[middle - best : middle]
    repeated = np.tile(period, (n // best + 2, 1))
    tail = x[middle:].copy()
    ramp = np.linspace(0.0, 1.0, STRETCH_CROSSFADE, dtype=np.float32)[:, None]
    tail[:STRETCH_CROSSFADE] = tail[:STRETCH_CROSSFADE] * ramp + repeated[n : n + STRETCH_CROSSFADE] * (
        1 - ramp
    )
    out = np.concatenate([x[:middle], repeated[:n], tail])
    stretched: np.ndarray = np.clip(out, -32768, 32767).astype(np.int16).ravel()
    return stretched


def _distance(a: int, b: int) -> int:
    """How far apart RTP timestamps a and b are, either way (with wrap-around)."""
    forward = (a - b) % _TIMESTAMP_WRAP
    return min(forward, _TIMESTAMP_WRAP - forward)


def _newer(a: int, b: int) -> bool:
    """RTP timestamp a is after b (with wrap-around)."""
    return 0 < (a - b) % _TIMESTAMP_WRAP < _TIMESTAMP_WRAP // 2


class AudioPlayout:
    """`push()` packets as they arrive; `tick()` at every playout period gives the frame to play."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, channels: int = 2) -> None:
        self._clock = clock
        self._decoder = OpusDecoder(channels)
        self._channels = channels
        self._packets: dict[int, bytes] = {}  # RTP timestamp -> Opus payload
        self._next: int | None = None  # the timestamp due to play next
        self._newest: int | None = None
        self._delays: collections.deque[tuple[float, float]] = collections.deque()  # (arrival, relative)
        self._target = MIN_DELAY
        self._target_lowered_at = 0.0
        self._accelerated_at = 0.0
        self._grown_at = 0.0
        self._level = 0.0  # the buffered seconds, smoothed over LEVEL_SECONDS
        self._stretched: np.ndarray | None = None  # the rest of a stretched packet, to play next
        self._last_arrival = float("-inf")
        self._started = False
        self.stats = PlayoutStats()

    # ----------------------------------------------------------------- arrivals

    def push(self, timestamp: int, payload: bytes, arrival: float | None = None) -> None:
        now = self._clock() if arrival is None else arrival
        self._last_arrival = now
        if (
            self._newest is not None
            and _distance(timestamp, self._newest) > NEW_STREAM_FRAMES * FRAME_SAMPLES
        ):
            # Far from everything so far, behind or ahead: a new stream (a connection rebuilt after a
            # network loss starts its timestamps from a new random base). Its delays are not
            # comparable with the old one's, and "behind" would make every packet late forever.
            self._start_over()
            self.stats.new_streams += 1
        if timestamp in self._packets:
            self.stats.duplicates += 1
            return
        self._learn(now, timestamp)  # a late packet too: it is the evidence that the buffer is short
        if self._next is not None and not _newer(timestamp, self._next) and timestamp != self._next:
            self.stats.late += 1
            return
        self._packets[timestamp] = payload
        if self._newest is None or _newer(timestamp, self._newest):
            self._newest = timestamp

    def _start_over(self) -> None:
        self._stretched = None
        self._packets.clear()
        self._delays.clear()
        self._next = self._newest = None
        self._started = False

    def _learn(self, arrival: float, timestamp: int) -> None:
        """The target delay from the spread of (arrival - send time) over the window."""
        relative = arrival - timestamp / SAMPLE_RATE
        self._delays.append((arrival, relative))
        while self._delays and arrival - self._delays[0][0] > DELAY_WINDOW_SECONDS:
            self._delays.popleft()
        values = sorted(r for _, r in self._delays)
        if len(values) < 2:
            return
        spread = values[min(len(values) - 1, int(TARGET_QUANTILE * len(values)))] - values[0]
        wanted = min(MAX_DELAY, max(MIN_DELAY, spread + FRAME_SECONDS))
        if wanted > self._target:
            self._target = wanted  # rise at once: the next late packets are already on their way
        elif wanted < self._target - FRAME_SECONDS and arrival - self._target_lowered_at >= SHRINK_EVERY:
            self._target -= FRAME_SECONDS  # fall slowly: a quiet second is not a quiet network
            self._target_lowered_at = arrival
        self.stats.target_delay = self._target
        self.stats.max_target_delay = max(self.stats.max_target_delay, self._target)

    def _buffered(self) -> float:
        if self._next is None or self._newest is None:
            return 0.0
        frames = ((self._newest - self._next) % _TIMESTAMP_WRAP) // FRAME_SAMPLES + 1
        return (
            frames * FRAME_SECONDS if _newer(self._newest, self._next) or self._newest == self._next else 0.0
        )

    # ----------------------------------------------------------------- playout

    def ready(self) -> bool:
        """Whether playout has started: once the first packet has waited for the target delay."""
        if self._started:
            return True
        if self._newest is None or not self._delays:
            return False
        if self._clock() - self._delays[0][0] >= self._target - 1e-9:
            oldest = min(self._packets, key=lambda t: (t - self._newest) % _TIMESTAMP_WRAP)  # type: ignore[operator]
            self._next = oldest
            self._started = True
            self._level = self._buffered()
        return self._started

    def tick(self) -> tuple[av.AudioFrame, FrameKind]:
        """The next 20 ms to play, and what it is."""
        self.stats.frames += 1
        if not self.ready():
            self.stats.silent += 1
            return self._frame(np.zeros(FRAME_SAMPLES * self._channels, np.int16), 0), FrameKind.SILENT
        assert self._next is not None and self._newest is not None
        if self._stretched is not None:
            # The second half of a packet stretched to grow the buffer: real audio, not made up.
            pcm, self._stretched = self._stretched, None
            self.stats.stretched += 1
            return self._frame(pcm, self._next), FrameKind.STRETCHED
        # The buffer's level, smoothed: under jitter the instant level swings with each packet's delay,
        # and acting on it would drop frames while packets come early and conceal while they come late.
        self._level += (self._buffered() - self._level) * LEVEL_SMOOTHING
        behind = ((self._newest - self._next) % _TIMESTAMP_WRAP) // FRAME_SAMPLES
        if _newer(self._newest, self._next) and behind > RESET_AFTER_FRAMES:
            # Back after a long gap: play from the newest, minus the target, not from seconds ago.
            self.stats.resets += 1
            keep = int(self._target / FRAME_SECONDS)
            self._next = (self._newest - keep * FRAME_SAMPLES) % _TIMESTAMP_WRAP
            self._packets = {t: p for t, p in self._packets.items() if not _newer(self._next, t)}
        self._shrink_if_needed()
        due = self._next
        if self._should_grow():
            # Less held than the target: the due packet is played stretched to twice its length (a
            # pitch period repeated), its second half at the next tick; the buffer gains a frame.
            try:
                long = stretch(self._decoder.decode(self._packets.pop(due)), self._channels)
            except OpusError as exc:
                log.debug("opus: %s; concealing", exc)
                long = None
            if long is not None:
                self._level += FRAME_SECONDS  # its own doing: the smoothed level need not catch up
                half = FRAME_SAMPLES * self._channels
                self._stretched = long[half:]
                self._next = (due + FRAME_SAMPLES) % _TIMESTAMP_WRAP
                self.stats.normal += 1
                self.stats.buffered = self._buffered()
                return self._frame(long[:half], due), FrameKind.NORMAL
        payload = self._packets.pop(due, None)
        kind: FrameKind
        try:
            if payload is not None:
                pcm, kind = self._decoder.decode(payload), FrameKind.NORMAL
            elif not _newer(self._newest, due):
                # Nothing after it has come: it is late, not lost. Conceal without moving on; once
                # nothing at all has come for a while (the sender stopped, or the network is gone),
                # silence: Opus' concealment never fades below a hiss of about -34 dBFS.
                if self._clock() - self._last_arrival > SILENCE_AFTER_SECONDS:
                    pcm = np.zeros(FRAME_SAMPLES * self._channels, np.int16)
                else:
                    pcm = self._decoder.conceal(FRAME_SAMPLES)
                kind = FrameKind.EXPANDED
            else:
                following = self._packets.get((due + FRAME_SAMPLES) % _TIMESTAMP_WRAP)
                if following is not None and has_fec(following):
                    pcm, kind = self._decoder.recover(following, FRAME_SAMPLES), FrameKind.RECOVERED
                else:
                    pcm, kind = self._decoder.conceal(FRAME_SAMPLES), FrameKind.CONCEALED
        except OpusError as exc:
            log.debug("opus: %s; concealing", exc)
            pcm, kind = self._decoder.conceal(FRAME_SAMPLES), FrameKind.CONCEALED
        if kind is not FrameKind.EXPANDED:
            self._next = (due + FRAME_SAMPLES) % _TIMESTAMP_WRAP
        setattr(self.stats, kind.value, getattr(self.stats, kind.value) + 1)
        self.stats.buffered = self._buffered()
        return self._frame(pcm, due), kind

    def _should_grow(self) -> bool:
        now = self._clock()
        if self._level >= self._target - FRAME_SECONDS / 2 or now - self._grown_at < GROW_EVERY:
            return False
        if self._next not in self._packets:
            return False  # the due packet is missing anyway: that is concealed (or expanded) below
        self._grown_at = now
        return True

    def _shrink_if_needed(self) -> None:
        """More than the target (and a frame) held: drop the due frame, at most every so often."""
        now = self._clock()
        if self._level <= self._target + 2 * FRAME_SECONDS or now - self._accelerated_at < ACCELERATE_EVERY:
            return
        assert self._next is not None
        if self._packets.pop(self._next, None) is not None or _newer(self._newest or 0, self._next):
            self._next = (self._next + FRAME_SAMPLES) % _TIMESTAMP_WRAP
            self.stats.accelerated += 1
            self._level -= FRAME_SECONDS
            self._accelerated_at = now

    def _frame(self, pcm: np.ndarray, timestamp: int) -> av.AudioFrame:
        layout = "stereo" if self._channels == 2 else "mono"
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = SAMPLE_RATE
        frame.pts = timestamp
        return frame

    def close(self) -> None:
        self._decoder.close()


class ParticipantAudio:
    """One participant's audio for the whole session: its playout buffer and the playout clock that
    ticks it, across every connection its packets come through (a rebuilt peer connection, the switch
    to an SFU feed), so that audio goes on where it was and its figures count the whole call.

    `push()` from a connection's receiver; the frames go to `on_frame(uid, frame)` every 20 ms once
    the first packet has come."""

    def __init__(self, uid: str, on_frame: Callable[[str, av.AudioFrame], None]) -> None:
        self.uid = uid
        self.playout = AudioPlayout()
        self._on_frame = on_frame
        self._task: asyncio.Task[None] | None = None
        self._levels: collections.deque[float] = collections.deque(maxlen=10)  # 200 ms of frames
        self.frames_played = 0
        self.last_packet_at: float | None = None
        self._closed = False

    @property
    def stats(self) -> PlayoutStats:
        return self.playout.stats

    @property
    def level(self) -> float:
        """The loudest 20 ms of the last 200 ms, RMS, 0..1."""
        return max(self._levels) if self._levels else 0.0

    def push(self, timestamp: int, payload: bytes) -> None:
        if self._closed:
            return  # a packet still in flight when the call's track ended
        now = time.monotonic()
        self.last_packet_at = now
        self.playout.push(timestamp, payload, now)
        if self._task is None:
            self._task = asyncio.ensure_future(self._clock())

    async def _clock(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += FRAME_SECONDS
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.2:
                due = loop.time()  # the loop was busy for long: start the clock over, no burst
            frame, kind = self.playout.tick()
            if kind is FrameKind.SILENT:
                continue  # nothing to play yet
            samples = frame.to_ndarray().ravel().astype(np.float64)
            self._levels.append(
                float(np.sqrt(samples @ samples / samples.size)) / 32768.0 if samples.size else 0.0
            )
            self.frames_played += 1
            try:
                self._on_frame(self.uid, frame)
            except Exception:
                log.exception("audio of %s: the frame's consumer failed", self.uid)

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.playout.close()
