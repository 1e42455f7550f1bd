"""Video freezes counted by WebRTC's rule (kiosk.calls.freezes), as the kiosk reports them."""

from __future__ import annotations

import pytest

from kiosk.calls.freezes import FreezeMeter
from kiosk.netlab.quality import frames_per_second, freeze_share


def test_a_steady_thirty_frames_a_second_has_no_freeze() -> None:
    meter = FreezeMeter()
    for n in range(90):
        meter.frame(n / 30)
    assert meter.freeze_count == 0 and meter.freeze_share == 0.0
    assert meter.frames_per_second == pytest.approx(30.0)


def test_a_gap_longer_than_the_mean_plus_150_ms_is_a_freeze_and_a_shorter_one_is_not() -> None:
    times = [n / 30 for n in range(60)]
    last = times[-1]
    times += [last + 0.12]  # 120 ms: more than 3 x 33 ms but less than 33 + 150 ms
    times += [times[-1] + 0.5]  # a 500 ms freeze
    times += [times[-1] + n / 30 for n in range(1, 30)]
    meter = FreezeMeter()
    for at in times:
        meter.frame(at)
    assert meter.freeze_count == 1
    assert meter.freeze_seconds == pytest.approx(0.5)
    assert freeze_share(times) == pytest.approx(0.5 / (times[-1] - times[0]))


def test_at_five_frames_a_second_a_gap_is_judged_against_three_times_the_mean() -> None:
    times = [n / 5 for n in range(20)]
    times += [times[-1] + 0.55, times[-1] + 0.55 + 0.7]  # 550 ms: under 3 x 200; 700 ms: over
    meter = FreezeMeter()
    for at in times:
        meter.frame(at)
    assert meter.freeze_count == 1 and meter.freeze_seconds == pytest.approx(0.7)
    assert frames_per_second(times) == pytest.approx((len(times) - 1) / (times[-1] - times[0]))
