"""The emulated device and the capture fan-out, without a network."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import av
import numpy as np
import pytest

from kiosk.media.capture import AudioCapture, VideoCapture
from kiosk.media.devices import DeviceError
from kiosk.media.emulated import EmulatedDevices
from kiosk.media.pattern import TestPattern, latency_ms, read_stamp


@pytest.mark.parametrize("codec", ["libvpx", "libx264"])
def test_stamp_survives_encoding(codec):
    pattern = TestPattern(640, 480)
    encoder = av.CodecContext.create(codec, "w")
    encoder.width, encoder.height, encoder.pix_fmt = 640, 480, "yuv420p"
    encoder.time_base = Fraction(1, 30)
    encoder.bit_rate = 300_000
    decoder = av.CodecContext.create("vp8" if codec == "libvpx" else "h264", "r")
    packets = []
    for i in range(20):
        frame = pattern.draw(i, stamp_ms=4_000_000_000 + i)
        frame.pts = i
        packets += encoder.encode(frame)
    packets += encoder.encode(None)  # x264 holds frames back for lookahead
    read = [read_stamp(decoded) for packet in packets for decoded in decoder.decode(packet)]
    assert len(read) >= 15 and all(r is not None and 4_000_000_000 <= r < 4_000_000_020 for r in read)


@pytest.mark.parametrize("divisor", [2, 4])
def test_the_stamp_reads_back_from_a_picture_the_sender_scaled_down(divisor):
    """A sender on a lower step of its resolution ladder scales the camera's picture down."""
    pattern = TestPattern(640, 480)
    width, height = 640 // divisor, 480 // divisor
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, 30)
    encoder.bit_rate = 150_000
    decoder = av.CodecContext.create("vp8", "r")
    read = []
    for i in range(20):
        frame = pattern.draw(i, stamp_ms=3_000_000_000 + i).reformat(width=width, height=height)
        frame.pts = i
        read += [read_stamp(d) for packet in encoder.encode(frame) for d in decoder.decode(packet)]
    assert len(read) >= 15 and all(r is not None and 3_000_000_000 <= r < 3_000_000_020 for r in read), read


def test_unstamped_frame_reads_none_and_latency_wraps():
    plain = av.VideoFrame.from_ndarray(np.full((480, 640, 3), 128, dtype=np.uint8), format="rgb24")
    assert read_stamp(plain.reformat(format="yuv420p")) is None
    assert latency_ms(0xFFFFFFF0, at_ms=0x10) == 0x20


async def test_one_camera_feeds_every_subscriber_and_pause_stops_it():
    devices = EmulatedDevices(width=320, height=240, fps=30)
    errors: list[Exception] = []
    capture = VideoCapture(devices, "emulated-camera-front", errors.append)
    capture.set_enabled(True)
    first, second = capture.subscribe(), capture.subscribe()
    a = await asyncio.wait_for(first.recv(), 2)
    b = await asyncio.wait_for(second.recv(), 2)
    assert a is b, "one capture, shared: the camera is read once for all peers"
    capture.set_paused(True)
    await asyncio.sleep(0.1)
    first._frames.clear()
    count = capture.frames_captured
    await asyncio.sleep(0.3)
    assert capture.frames_captured == count
    capture.set_paused(False)
    await asyncio.wait_for(first.recv(), 2)
    await capture.close()
    assert not errors


async def test_camera_unplugged_reports_once_and_recovers():
    devices = EmulatedDevices(width=320, height=240, fps=30)
    errors: list[Exception] = []
    capture = VideoCapture(devices, "emulated-camera-front", errors.append)
    restored = []
    capture.on_restored = lambda: restored.append(True)
    capture.set_enabled(True)
    track = capture.subscribe()
    await asyncio.wait_for(track.recv(), 2)
    device = devices.unplug("emulated-camera-front")
    await asyncio.sleep(1.5)
    assert len(errors) == 1 and isinstance(errors[0], DeviceError)
    devices.plug(device)
    await asyncio.sleep(1.3)
    track._frames.clear()
    await asyncio.wait_for(track.recv(), 2)
    assert restored == [True]
    await capture.close()


async def test_muted_microphone_sends_silence_and_slow_readers_do_not_queue():
    devices = EmulatedDevices(tone_hz=440.0)  # a steady tone: every frame is loud
    capture = AudioCapture(devices, "emulated-mic", lambda exc: None)
    track = capture.subscribe()
    loud = await asyncio.wait_for(track.recv(), 2)
    assert np.abs(loud.to_ndarray()).max() > 5000
    capture.set_muted(True)
    await asyncio.sleep(0.1)
    track._frames.clear()
    quiet = await asyncio.wait_for(track.recv(), 2)
    assert np.abs(quiet.to_ndarray()).max() == 0
    await asyncio.sleep(0.3)  # 15 frames produced, nobody reading
    assert len(track._frames) <= 2
    await capture.close()


async def test_lost_microphone_keeps_the_stream_with_silence_and_comes_back():
    devices = EmulatedDevices()
    errors: list[Exception] = []
    capture = AudioCapture(devices, "emulated-mic", errors.append)
    track = capture.subscribe()
    await asyncio.wait_for(track.recv(), 2)
    mic = devices.unplug("emulated-mic")
    await asyncio.sleep(0.3)
    track._frames.clear()
    silent = await asyncio.wait_for(track.recv(), 2)
    assert np.abs(silent.to_ndarray()).max() == 0
    assert len(errors) == 1 and "emulated-mic" in str(errors[0])
    devices.plug(mic)
    await asyncio.sleep(1.3)  # one retry interval
    track._frames.clear()
    back = await asyncio.wait_for(track.recv(), 2)
    assert np.abs(back.to_ndarray()).max() > 5000 and len(errors) == 1
    await capture.close()


async def test_microphone_plays_a_sound_file_and_speaker_records_to_wav(tmp_path):
    import wave

    rate = 16000  # not 48 kHz, so the file is resampled on the way in
    t = np.arange(rate) / rate
    samples = (0.5 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    source = tmp_path / "chime.wav"
    with wave.open(str(source), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    devices = EmulatedDevices(sound_file=source, speaker_dir=tmp_path / "speaker")
    mic = devices.open_microphone("emulated-mic")
    frame = await mic.next_frame()
    assert frame.sample_rate == 48000 and frame.samples == 960
    data = frame.to_ndarray().reshape(-1).astype(np.float64)
    # a 1 kHz tone at 48 kHz: the strongest bin of a 960-sample FFT is 20 (= 1000 Hz / 50 Hz)
    assert int(np.argmax(np.abs(np.fft.rfft(data)))) == 20
    speaker = devices.open_speaker("emulated-speaker")
    for _ in range(5):
        speaker.write("bob", await mic.next_frame())
    speaker.close()
    with wave.open(str(tmp_path / "speaker" / "emulated-speaker" / "bob.wav")) as written:
        assert written.getframerate() == 48000 and written.getnframes() == 5 * 960
    with pytest.raises(DeviceError, match="cannot open sound file"):
        EmulatedDevices(sound_file=tmp_path / "missing.wav").open_microphone("emulated-mic")
