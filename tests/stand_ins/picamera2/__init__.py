"""A stand-in for picamera2, for tests on machines without a Raspberry Pi camera. Not the real thing.

It follows picamera2's documented API (Picamera2, create_video_configuration, configure, start,
capture_request / CompletedRequest.make_array / release, MappedArray, H264Encoder + start_encoder
with an Output subclass, global_camera_info) closely enough that kiosk's adapter runs unchanged.
Behind it, simulated sensors (see `picamera2.stand_in`) draw kiosk's TestPattern into YUV420 buffers
whose stride is padded to 64 bytes as on a Pi, at the configured frame duration, from a small pool
of buffers that a caller must release; the H.264 encoder is PyAV's libx264 standing in for the Pi's
V4L2 encoder, honouring repeat (SPS/PPS on every keyframe), iperiod and profile.

Only the parts kiosk uses exist; anything else raises AttributeError, as a reminder.
"""

from picamera2.picamera2 import Picamera2
from picamera2.request import CompletedRequest, MappedArray

__all__ = ["CompletedRequest", "MappedArray", "Picamera2"]
