"""The emulated sound card (tests/alsa_card, alsa_card_support) against the hardware behaviour it models,
through real alsa-lib and real pyalsaaudio: one holder at a time, real-time pacing, underruns and overruns,
what was really played, a persistent volume control or none, and a stereo-only card.

pyalsaaudio calls snd_pcm_open() without releasing the GIL, so a blocking open (a busy card with
`defaults.pcm.nonblock 0`) freezes every Python thread of the process: the tests that wait on a busy card
do the waiting in a child process.
"""

from __future__ import annotations

import math
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import alsaaudio
import numpy as np
import pytest
from alsa_card_support import EmulatedCard
from alsa_support import AlsaConfig

RATE = 48000
PERIOD = 960  # 20 ms
PERIODS = 4  # an 80 ms buffer
BUFFER_SECONDS = PERIOD * PERIODS / RATE
EPIPE = -32

CardFactory = Callable[..., EmulatedCard]


@pytest.fixture
def alsa_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AlsaConfig:
    config = AlsaConfig(tmp_path / "asound.conf")
    monkeypatch.setenv("ALSA_CONFIG_PATH", config.env_value)
    return config


@pytest.fixture
def make_card(alsa_config: AlsaConfig, tmp_path: Path) -> CardFactory:
    """make_card(name="card", **EmulatedCard options): the card, in the written configuration."""

    def make(name: str = "card", **options: object) -> EmulatedCard:
        card = EmulatedCard.in_dir(tmp_path, name, **options).add_to(alsa_config)  # type: ignore[arg-type]
        alsa_config.write()
        return card

    return make


def playback(device: str, channels: int = 2, **options: int) -> alsaaudio.PCM:
    settings = {"rate": RATE, "periodsize": PERIOD, "periods": PERIODS, **options}
    return alsaaudio.PCM(type=alsaaudio.PCM_PLAYBACK, device=device, channels=channels, **settings)


def capture(device: str, channels: int = 1, **options: int) -> alsaaudio.PCM:
    settings = {"rate": RATE, "periodsize": PERIOD, "periods": PERIODS, **options}
    return alsaaudio.PCM(type=alsaaudio.PCM_CAPTURE, device=device, channels=channels, **settings)


def tone(frequency: float, frames: int, amplitude: int = 10000, channels: int = 2) -> np.ndarray:
    t = np.arange(frames) / RATE
    mono = (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.int16)
    return np.repeat(mono[:, None], channels, axis=1)


class Child:
    """A Python child process running `script`, its stdout lines readable with a timeout."""

    def __init__(self, script: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def next_line(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.stop()


OPEN_IN_CHILD = """
import sys, time, alsaaudio
print("opening", flush=True)
try:
    pcm = alsaaudio.PCM(type=alsaaudio.PCM_PLAYBACK, device={device!r}, channels=2, rate=48000, periodsize=960)
except alsaaudio.ALSAAudioError as error:
    print("failed " + str(error), flush=True)
    sys.exit(0)
print("opened", flush=True)
{then}
"""


# ----------------------------------------------------------------------------- one holder at a time


def test_a_busy_card_fails_at_once_with_ebusy(make_card: CardFactory) -> None:
    make_card("spk")
    holder = playback("spk")
    started = time.monotonic()
    with pytest.raises(alsaaudio.ALSAAudioError, match=r"Device or resource busy \[spk\]"):
        playback("spk")  # PCM_NORMAL, but alsa.conf's defaults.pcm.nonblock 1 makes the open non-blocking
    with pytest.raises(alsaaudio.ALSAAudioError, match="Device or resource busy"):
        playback("spk", mode=alsaaudio.PCM_NONBLOCK)
    assert time.monotonic() - started < 2.0  # a blocking open would hang until the holder closes
    # Capture is another substream of the same card: it opens while playback is held.
    microphone = capture("spk")
    microphone.close()
    holder.close()
    playback("spk").close()  # released by close


def test_an_explicit_nonblocking_open_never_waits(make_card: CardFactory) -> None:
    make_card("spk", nonblock_open=False)
    holder = playback("spk")
    try:
        with pytest.raises(alsaaudio.ALSAAudioError, match="Device or resource busy"):
            playback("spk", mode=alsaaudio.PCM_NONBLOCK)
    finally:
        holder.close()


@pytest.mark.parametrize(
    ("card_option", "config_default", "waits"),
    [
        (False, None, True),  # the card's nonblock_open false
        (None, "0", True),  # defaults.pcm.nonblock 0, as pcm_hw.c reads it
        (True, "0", False),  # the card's option overrides the default
    ],
    ids=["option", "default", "option-overrides-default"],
)
def test_a_blocking_open_waits_until_the_holder_closes(
    make_card: CardFactory,
    alsa_config: AlsaConfig,
    children: list[Child],
    card_option: bool | None,
    config_default: str | None,
    waits: bool,
) -> None:
    make_card("spk", nonblock_open=card_option)
    if config_default is not None:
        alsa_config.add_raw("defaults", f"defaults.pcm.nonblock {config_default}")
        alsa_config.write()
    holder = playback("spk")
    child = Child(OPEN_IN_CHILD.format(device="spk", then=""))
    children.append(child)
    assert child.next_line(timeout=20) == "opening"
    if not waits:
        line = child.next_line(timeout=20)
        assert line is not None and line.startswith("failed Device or resource busy"), line
        holder.close()
        return
    # The child is now in snd_pcm_open (or about to be): it must not get the card while it is held.
    assert child.next_line(timeout=0.5) is None
    holder.close()
    assert child.next_line(timeout=20) == "opened"


def test_the_card_is_released_when_its_holder_dies(make_card: CardFactory, children: list[Child]) -> None:
    make_card("spk")
    child = Child(OPEN_IN_CHILD.format(device="spk", then="time.sleep(60)"))
    children.append(child)
    assert child.next_line(timeout=20) == "opening"
    assert child.next_line(timeout=20) == "opened"
    with pytest.raises(alsaaudio.ALSAAudioError, match="Device or resource busy"):
        playback("spk")
    child.process.kill()  # no close: the kernel drops the lock with the process
    child.process.wait(timeout=10)
    playback("spk").close()


def test_a_blocking_open_in_a_thread_freezes_every_thread(
    make_card: CardFactory, children: list[Child]
) -> None:
    """pyalsaaudio 0.11 keeps the GIL in snd_pcm_open(): with a blocking open of a busy card, the whole
    interpreter stops until the holder lets go. (With stock alsa.conf the open fails with EBUSY instead.)"""
    make_card("spk", nonblock_open=False)
    hold = 1.5
    child = Child(OPEN_IN_CHILD.format(device="spk", then=f"time.sleep({hold})\npcm.close()"))
    children.append(child)
    assert child.next_line(timeout=20) == "opening"
    assert child.next_line(timeout=20) == "opened"
    opened = threading.Event()

    def open_in_thread() -> None:
        playback("spk").close()
        opened.set()

    opener = threading.Thread(target=open_in_thread, daemon=True)
    ticks = [time.monotonic()]
    opener.start()
    while not opened.is_set() and ticks[-1] - ticks[0] < 20:
        time.sleep(0.01)
        ticks.append(time.monotonic())
    opener.join(timeout=20)
    assert opened.is_set()
    # This thread did not run while the other one waited in the open: one long gap between two ticks.
    assert max(np.diff(ticks)) > hold / 3, max(np.diff(ticks))


# ----------------------------------------------------------------------------- pacing, underrun


def test_blocking_writes_take_real_time_and_everything_is_played(make_card: CardFactory) -> None:
    card = make_card("spk")
    seconds = 1.0
    signal = tone(440, int(seconds * RATE))
    # A 400 ms buffer: a loaded machine must not make the writer late.
    pcm = playback("spk", periodsize=2400, periods=8)
    buffer_seconds = 2400 * 8 / RATE
    started = time.monotonic()
    results = [pcm.write(signal[k : k + PERIOD].tobytes()) for k in range(0, len(signal), PERIOD)]
    written = time.monotonic() - started
    pcm.close()  # drains: returns when the card has played the last frame
    played = time.monotonic() - started

    assert results == [PERIOD] * (len(signal) // PERIOD)
    assert written >= seconds - buffer_seconds - 0.01, written  # the last writes waited for room
    assert played >= 0.8 * seconds and played >= seconds - 0.01, played
    assert played < seconds + 3.0, played
    assert np.array_equal(card.played_frames(channels=2), signal)  # no mixer: unscaled, nothing lost


def test_an_underrun_returns_epipe_drops_that_write_and_plays_silence(make_card: CardFactory) -> None:
    card = make_card("spk")
    first = tone(440, PERIOD)
    lost = np.full((PERIOD, 2), 12345, dtype=np.int16)
    last = tone(660, PERIOD)
    pcm = playback("spk")

    before_first = time.monotonic()
    assert pcm.write(first.tobytes()) == PERIOD  # starts the card
    time.sleep(3 * BUFFER_SECONDS)  # the card plays the period, then runs dry
    assert pcm.write(lost.tobytes()) == EPIPE  # pyalsaaudio re-prepared the stream; this period is gone
    assert pcm.state() == alsaaudio.PCM_STATE_PREPARED
    assert pcm.write(last.tobytes()) == PERIOD  # restarts the card
    after_last = time.monotonic()
    pcm.close()

    played = card.played_frames(channels=2)
    assert np.array_equal(played[:PERIOD], first)
    assert np.array_equal(played[-PERIOD:], last)
    gap = played[PERIOD:-PERIOD]
    assert not gap.any()  # the card had nothing: silence, and not a trace of the lost period
    # The silence lasts as long as the card was dry: from the end of the first period to the restart.
    assert len(gap) >= (3 * BUFFER_SECONDS - PERIOD / RATE) * RATE - 1, len(gap)
    assert len(gap) <= (after_last - before_first) * RATE, len(gap)


# ----------------------------------------------------------------------------- capture


def ramp(frames: int) -> np.ndarray:
    return (np.arange(frames) % 32768).astype(np.int16)


def test_capture_is_paced_reads_the_input_file_then_silence(make_card: CardFactory, tmp_path: Path) -> None:
    source = ramp(RATE // 4)  # 250 ms
    (tmp_path / "mic.raw").write_bytes(source.astype("<i2").tobytes())
    make_card("mic", capture_file=tmp_path / "mic.raw")
    pcm = capture("mic", channels=2)  # a mono file feeds both channels
    reads = 25  # 500 ms
    started = time.monotonic()
    chunks = [pcm.read() for _ in range(reads)]
    elapsed = time.monotonic() - started
    pcm.close()

    assert [length for length, _ in chunks] == [PERIOD] * reads
    frames = np.frombuffer(b"".join(data for _, data in chunks), dtype="<i2").reshape(-1, 2)
    assert elapsed >= reads * PERIOD / RATE - 0.01, elapsed  # produced in real time, not at once
    assert np.array_equal(frames[: len(source), 0], source)
    assert np.array_equal(frames[:, 0], frames[:, 1])
    assert not frames[len(source) :].any()  # after the end of the file: silence


def test_capture_overrun_returns_epipe_and_loses_the_frames(make_card: CardFactory, tmp_path: Path) -> None:
    # A two-channel file whose frames tell their own index: low 15 bits, then the rest.
    index = np.arange(2 * RATE)
    source = np.stack([index % 32768, index // 32768], axis=1).astype("<i2")
    (tmp_path / "mic.raw").write_bytes(source.tobytes())
    make_card("mic", capture_file=tmp_path / "mic.raw", capture_channels=2)
    pcm = capture("mic", channels=2)
    length, data = pcm.read()
    assert length == PERIOD and np.array_equal(np.frombuffer(data, "<i2").reshape(-1, 2), source[:PERIOD])
    time.sleep(3 * BUFFER_SECONDS)  # the buffer fills while nobody reads
    assert pcm.read() == (EPIPE, b"")
    length, data = pcm.read()
    pcm.close()
    assert length == PERIOD
    after = np.frombuffer(data, "<i2").reshape(-1, 2)
    # The microphone kept going: capture resumes further on in the file, the frames in between are lost.
    start = int(after[0, 0]) + 32768 * int(after[0, 1])
    assert np.array_equal(after, source[start : start + PERIOD])
    assert start >= 3 * BUFFER_SECONDS * RATE, start


# ----------------------------------------------------------------------------- formats


def test_a_stereo_only_card_gives_two_channels_when_one_is_asked(make_card: CardFactory) -> None:
    make_card("hdmi", channels=(2,), mixer=False)
    make_card("jack", channels=(1, 2))
    stereo = playback("hdmi", channels=1, rate=44100)
    info = stereo.info()
    stereo.close()
    assert (info["channels"], info["rate"], info["format_name"]) == (2, 48000, "S16_LE")
    mono = playback("jack", channels=1, format=alsaaudio.PCM_FORMAT_S32_LE)
    info = mono.info()
    with pytest.raises(alsaaudio.ALSAAudioError, match="multiple of framesize"):
        mono.write(b"\0" * 3)
    mono.close()
    assert (info["channels"], info["format_name"]) == (1, "S16_LE")
    assert 240 <= info["period_size"] <= 9600 and 2 <= info["periods"] <= 16


# ----------------------------------------------------------------------------- mixer


def play_and_close(device: str, signal: np.ndarray) -> None:
    pcm = playback(device)
    for k in range(0, len(signal), PERIOD):
        assert pcm.write(signal[k : k + PERIOD].tobytes()) == PERIOD
    pcm.close()


def test_the_mixer_volume_scales_what_is_played(make_card: CardFactory) -> None:
    card = make_card("spk")
    assert alsaaudio.mixers(device="spk") == ["PCM"]
    mixer = alsaaudio.Mixer(control="PCM", device="spk")
    assert mixer.getrange(units=alsaaudio.VOLUME_UNITS_RAW) == [0, 255]
    assert mixer.getvolume() == [100, 100]

    mixer.setvolume(50)
    assert mixer.getvolume() == [50, 50]
    raw = mixer.getvolume(units=alsaaudio.VOLUME_UNITS_RAW)
    assert raw == [128, 128]  # pyalsaaudio: rint(255 * 0.5)
    # The dB TLV describes the same linear law the card applies: 20 log10(128/255), in 0.01 dB.
    for db in mixer.getvolume(units=alsaaudio.VOLUME_UNITS_DB):
        assert abs(db - 2000 * math.log10(128 / 255)) <= 1
    signal = tone(440, 4 * PERIOD)
    play_and_close("spk", signal)

    mixer.setmute(1)  # the playback switch
    play_and_close("spk", signal)
    mixer.setmute(0)
    mixer.setvolume(-1200, units=alsaaudio.VOLUME_UNITS_DB)  # about a quarter of the amplitude
    quarter = mixer.getvolume(units=alsaaudio.VOLUME_UNITS_RAW)
    assert all(abs(v - 255 * 10 ** (-12 / 20)) <= 1 for v in quarter), quarter
    play_and_close("spk", signal)
    mixer.close()

    played = card.played_frames(channels=2)
    assert len(played) == 3 * len(signal)
    half, muted, last = played[: len(signal)], played[len(signal) : -len(signal)], played[-len(signal) :]
    assert np.abs(half.astype(int) - np.rint(signal.astype(float) * 128 / 255)).max() <= 1
    assert not muted.any()
    assert np.abs(last.astype(int) - np.rint(signal.astype(float) * quarter[0] / 255)).max() <= 1


def test_the_mixer_state_persists_and_is_shared(make_card: CardFactory) -> None:
    card = make_card("spk", initial_volume=200)
    watcher = alsaaudio.Mixer(control="PCM", device="spk")
    assert watcher.getvolume(units=alsaaudio.VOLUME_UNITS_RAW) == [200, 200]

    setter = alsaaudio.Mixer(control="PCM", device="spk")
    setter.setvolume(30)
    setter.setvolume(10, channel=1)
    setter.close()
    # Another handle sees the change (a control's value event), as with a card's controls.
    assert watcher.getvolume() == [30, 10]
    watcher.close()

    state = card.mixer_values()
    assert (
        state is not None and state.volume == [round(255 * 0.3), round(255 * 0.1)] and state.switch == [1, 1]
    )
    reopened = alsaaudio.Mixer(control="PCM", device="spk")
    assert reopened.getvolume() == [30, 10]
    reopened.close()
    # A new configuration of the same card (the kiosk restarts) keeps the stored volume.
    make_card("spk", initial_volume=200)
    assert alsaaudio.Mixer(control="PCM", device="spk").getvolume() == [30, 10]


def test_a_card_without_a_volume_control(make_card: CardFactory) -> None:
    card = make_card("hdmi", channels=(2,), mixer=False)
    assert alsaaudio.mixers(device="hdmi") == []
    with pytest.raises(alsaaudio.ALSAAudioError, match=r"Unable to find mixer control PCM,0 \[hdmi\]"):
        alsaaudio.Mixer(control="PCM", device="hdmi")
    signal = tone(440, 2 * PERIOD)
    play_and_close("hdmi", signal)
    assert np.array_equal(card.played_frames(channels=2), signal)  # nothing scales it
