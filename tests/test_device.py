"""The device composed from its config: cameras, audio, echo cancellation, passthrough through the SDK."""

from __future__ import annotations

import asyncio
from pathlib import Path

from calls_support import Endpoint, make_user, new_session_id, running_server, video_frames, wait_until

from kiosk.config import load_config, parse_config
from kiosk.device import build_devices
from kiosk.media.aec import EchoCancelledMicrophone

ROOT = Path(__file__).resolve().parent.parent


async def test_emulated_config_builds_the_whole_device():
    config = load_config(ROOT / "config" / "emulated.toml")
    devices, choices = build_devices(config)
    assert [d.device_id for d in devices.video_inputs()] == ["emulated-front", "emulated-back"]
    assert devices.audio_modes() == ["SPEAKER", "EARPIECE", "HEADPHONES"]
    assert choices.video_codec is None and choices.recording_dir == Path("recordings")
    microphone = devices.open_microphone(devices.audio_inputs()[0].device_id)
    assert isinstance(microphone, EchoCancelledMicrophone), "echo cancellation is on by default"
    frame = await microphone.next_frame()
    assert frame.samples == 960 and frame.sample_rate == 48000
    microphone.close()
    speaker = devices.open_speaker(devices.output_for_mode("SPEAKER").device_id)
    assert speaker._reference is not None, "what the speaker plays is the echo canceller's reference"
    speaker.close()


def test_fallback_order_comes_from_the_config():
    config = parse_config("[audio]\nfallback_order = ['HEADPHONES', 'EARPIECE', 'SPEAKER', 'BLUETOOTH']\n")
    devices, _ = build_devices(config)
    assert devices.audio_modes() == ["HEADPHONES", "EARPIECE", "SPEAKER"]


def test_processing_off_gives_the_plain_microphone():
    config = parse_config(
        "[audio]\necho_cancellation = false\nnoise_suppression = false\nauto_gain_control = false\n"
    )
    devices, _ = build_devices(config)
    microphone = devices.open_microphone(devices.audio_inputs()[0].device_id)
    assert not isinstance(microphone, EchoCancelledMicrophone)
    microphone.close()


async def test_pi_camera_h264_passthrough_through_a_real_call(pi, tmp_path):
    pi.add_camera()
    config = parse_config(
        """
[[cameras]]
id = "door"
backend = "picamera2"
width = 320
height = 240
fps = 30
h264_passthrough = true
keyframe_interval = 15
"""
    )
    devices, choices = build_devices(config)
    assert choices.video_codec == "H264"
    async with running_server(tmp_path / "server") as server:
        door = Endpoint(
            server.url,
            "door",
            await make_user(server.url, "door"),
            tmp_path,
            devices=devices,
            video_codec="H264",
        )
        desk = Endpoint(server.url, "desk", await make_user(server.url, "desk"), tmp_path, video_codec="H264")
        try:
            session = new_session_id()
            await door.join(session)
            await desk.join(session)
            await wait_until(lambda: video_frames(desk, "door"), 15, "the Pi camera's own H.264 at the desk")
            await asyncio.sleep(1.0)
            frames = await video_frames(desk, "door")
            assert frames >= 15, frames
            transceiver = door.calls.session.peers["desk"].pc.getTransceivers()[1]
            assert transceiver.sender._RTCRtpSender__encoder.__class__.__name__ == "H264Encoder"
        finally:
            await door.calls.close()
            await desk.calls.close()


async def test_a_configured_kiosk_refuses_screen_share_clearly(tmp_path):
    from kiosk.calls import NotSupportedError

    devices, _ = build_devices(load_config(ROOT / "config" / "emulated.toml"))
    async with running_server(tmp_path / "server") as server:
        kiosk = Endpoint(server.url, "kiosk", await make_user(server.url, "kiosk"), tmp_path, devices=devices)
        try:
            await kiosk.join(new_session_id())
            try:
                kiosk.calls.start_screen_share()
            except NotSupportedError as exc:
                assert "no screen source" in exc.message
            else:
                raise AssertionError("a kiosk with no screen source must refuse screen share")
            assert kiosk.calls.session.active
        finally:
            await kiosk.calls.close()
