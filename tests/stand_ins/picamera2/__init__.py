"""A stand-in for picamera2 (0.3.36), for tests on machines without a Raspberry Pi camera. Not the real thing.

It follows picamera2's API and, where kiosk depends on it, picamera2's behaviour as its source has it
(see /tmp/research/picamera2.md), closely enough that kiosk's adapter runs unchanged. Simulated
sensors (`picamera2.stand_in`) draw kiosk's TestPattern into YUV420 buffers whose stride is padded to
64 bytes as on a Pi, at the configured frame duration, from a small pool of buffers that a caller
must release; one thread plays both libcamera and picamera2's event loop.

Modelled:
- Platform: `picamera2.platform` (Platform.VC4/PISP, get_platform()) detected once at import from the
  simulated /dev/video* card names ("pispbe" -> PISP, "bcm2835-isp" -> VC4), `Picamera2.platform`;
  `stand_in.set_platform("PISP")` makes the machine a Pi 5 (and the next import a fresh one).
- Encoders: `picamera2.encoders.H264Encoder` is the V4L2 encoder on VC4 and LibavH264Encoder on PISP,
  with upstream's constructors and defaults. The V4L2 one (libx264 on a poll thread standing in for
  the bcm2835-codec) honours repeat, iperiod (GOP 60 when None), profile and qp, clamps the bitrate
  to the driver's 25 kbit/s..25 Mbit/s, fails to start without /dev/video11 (a Pi 5), and counts
  force_key_frame() calls: one forced IDR per request on successive frames. LibavH264Encoder encodes
  in the event loop and forces a keyframe with `pict_type = "I"`, which PyAV >= 14 refuses: the
  TypeError ends the event loop, frames stop, and a later stop() never returns (close() does).
  start_encoder's framerate default (the mode's fastest, at most 30; libav keeps its own 30) and
  _setup's Quality.MEDIUM bitrates (linear for V4L2, square root for libav) are upstream's; encoders
  can be stopped and started while the camera runs; each start is recorded with its bitrate and
  framerate in SimulatedCamera.encoders.
- Sensor modes: the published modes of imx219, imx708 and imx477 (`sensor_modes`, read once per
  Picamera2, with one reconfiguration per mode, refused while started); with no `sensor=`/`raw=` the
  mode is chosen by libcamera's scoring from the main size, `sensor={"output_size", "bit_depth"}` and
  `raw={"size", "format"}` (a sensor_modes entry too) are honoured, `camera_config["sensor"]` and the
  raw stream are filled in, FrameDurationLimits are clamped to the mode's fastest frame, and the
  chosen mode and its field of view (crop over pixel array) are recorded.
- Timeouts: capture_request(wait=<seconds>) raises TimeoutError, cancel_all_and_flush cancels the
  waiting jobs (both from 0.3.20).
- Version: importlib.metadata finds tests/stand_ins/picamera2-0.3.36.dist-info; a dist-info for an
  older version earlier on sys.path (then `stand_in.reimport()`) makes the stand-in behave as that
  version for what it models: no cancel_all_and_flush and a wait that only means "wait" before
  0.3.20, no force_key_frame before 0.3.32.

Not modelled: the picture does not show the crop (only the recorded field of view does); lores and
raw buffers, other formats than YUV420, transforms, colour spaces, controls other than
FrameDurationLimits; MJPEG/JPEG encoders, audio, outputs other than the Output base class;
the V4L2 encoder's 1920-pixel limit, H.264 levels and SPS framerate; libav's use_hw; PISP raw formats
and stream alignment; exposure and frame durations that vary with light; kernel-dependent mode frame
rates (one published set per sensor); the camera manager thread and pipeline handler errors.
Anything kiosk does not use raises AttributeError, as a reminder.
"""

from concurrent.futures import CancelledError, TimeoutError

from picamera2.picamera2 import Picamera2
from picamera2.platform import Platform, get_platform
from picamera2.request import CompletedRequest, MappedArray
from picamera2.sensor_format import SensorFormat

__all__ = [
    "CancelledError",
    "CompletedRequest",
    "MappedArray",
    "Picamera2",
    "Platform",
    "SensorFormat",
    "TimeoutError",
    "get_platform",
]
