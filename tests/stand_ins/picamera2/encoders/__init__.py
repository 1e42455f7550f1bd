"""Stand-in picamera2.encoders: H264Encoder is the V4L2 hardware encoder on VC4 (Pi 4 and older) and
LibavH264Encoder (libx264) on PISP (Pi 5), decided once at import from the detected platform, as in
picamera2. Both classes can always be imported by their own names."""

from picamera2.encoders.encoder import Encoder, Quality
from picamera2.encoders.libav_h264_encoder import LibavH264Encoder
from picamera2.platform import Platform, get_platform

_hw_encoder_available = get_platform() == Platform.VC4

if _hw_encoder_available:
    from picamera2.encoders.h264_encoder import H264Encoder
else:
    from picamera2.encoders.libav_h264_encoder import LibavH264Encoder as H264Encoder

__all__ = ["Encoder", "H264Encoder", "LibavH264Encoder", "Quality"]
