"""Camera layer without ROS: crop/resize geometry, device-clock mapping, messages, the RealSense backend.

The RealSense USB camera cannot exist on these machines: the backend is driven by `rs.software_device`
(SoftwareRealSense, a mock of the hardware only) and by `.db3` recordings made from it; everything after the
device (sensors, profiles, syncer, align, recorder, playback) is real librealsense.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pyrealsense2 as rs
import pytest

from irevla_ros.camera.base import (
    CameraDisconnectedError,
    CameraEndOfStreamError,
    CameraError,
    CameraNotFoundError,
    Intrinsics,
)
from irevla_ros.camera.image_ops import CropResize, adjust_intrinsics, center_crop, crop_resize
from irevla_ros.camera.realsense import PlaybackDeviceFactory, RealSenseCamera, RealSenseConfig, UsbDeviceFactory
from irevla_ros.camera.software import SoftwareRealSense, pattern_color, pattern_depth, pattern_frame_number
from irevla_ros.camera.stream import FINISHED, LOST, STREAMING, CameraStream, StreamConfig
from irevla_ros.camera.timestamps import DeviceClockMapper

PIXEL_ATOL = 0.35  # px: centroid of a rendered dot vs its projection through the adjusted intrinsics
W, H = 96, 72


def _intr(**kw) -> Intrinsics:
    base = dict(width=640, height=480, fx=610.5, fy=612.25, cx=322.4, cy=238.9, coeffs=(0.1, -0.2, 1e-3, 2e-3, 0.05))
    base.update(kw)
    return Intrinsics(**base)


# --- crop / resize -----------------------------------------------------------------------------------------
def same_intrinsics(a: Intrinsics, b: Intrinsics) -> bool:
    """Equal up to float32 rounding (librealsense stores intrinsics as float)."""
    return ((a.width, a.height, a.distortion_model) == (b.width, b.height, b.distortion_model)
            and np.allclose([a.fx, a.fy, a.cx, a.cy, *a.coeffs], [b.fx, b.fy, b.cx, b.cy, *b.coeffs], rtol=1e-6,
                            atol=1e-6))


def _project(intr: Intrinsics, point: np.ndarray) -> np.ndarray:
    uvw = intr.K @ point
    return uvw[:2] / uvw[2]


def _dot_image(intr: Intrinsics, uv: np.ndarray, radius: float = 6.0) -> np.ndarray:
    """A bright anti-aliased disc centred at uv (sub-pixel, supersampled)."""
    ss = 4
    ys, xs = np.mgrid[0:intr.height * ss, 0:intr.width * ss]
    xs = (xs + 0.5) / ss - 0.5
    ys = (ys + 0.5) / ss - 0.5
    disc = ((xs - uv[0]) ** 2 + (ys - uv[1]) ** 2 <= radius**2).astype(np.float64)
    img = disc.reshape(intr.height, ss, intr.width, ss).mean(axis=(1, 3))
    return np.repeat((img * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _centroid(img: np.ndarray) -> np.ndarray:
    gray = img[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:gray.shape[0], 0:gray.shape[1]]
    return np.array([(gray * xs).sum(), (gray * ys).sum()]) / gray.sum()


@pytest.mark.parametrize("op", [
    CropResize(100, 60, 400, 400, 224, 224),
    CropResize(0, 0, 0, 0, 128, 96),
    CropResize(151, 97, 301, 233),
    CropResize(80, 0, 480, 480, 512, 512),  # enlarging
])
def test_crop_resize_keeps_projection_consistent(op):
    """A 3-D point projects (through the adjusted intrinsics) where its pixel ends up in the processed image."""
    intr = _intr(coeffs=(0.0,) * 5)
    point = np.array([0.031, -0.012, 0.6])
    uv = _project(intr, point)
    img, new = crop_resize(_dot_image(intr, uv), intr, op)
    assert img.shape[:2] == (new.height, new.width)
    assert np.allclose(_centroid(img), _project(new, point), atol=PIXEL_ATOL * max(1.0, new.fx / intr.fx))
    assert new.coeffs == intr.coeffs and new.distortion_model == intr.distortion_model


def test_crop_resize_identity_returns_input_and_depth_uses_nearest():
    intr = _intr(width=W, height=H, fx=90.0, fy=90.0, cx=47.5, cy=35.5)
    depth = pattern_depth(3, W, H)
    same, same_intr = crop_resize(depth, intr, CropResize())
    assert same is depth and same_intr == intr
    small, _ = crop_resize(depth, intr, CropResize(0, 0, 0, 0, W // 2, H // 2), nearest=True)
    assert set(np.unique(small)) <= set(np.unique(depth)), "nearest must never invent depth values"


def test_crop_resize_rejects_bad_boxes_and_mismatched_images():
    intr = _intr()
    with pytest.raises(ValueError, match="does not fit"):
        adjust_intrinsics(intr, CropResize(400, 0, 300, 100))
    with pytest.raises(ValueError, match="both be 0"):
        CropResize(0, 0, 10, 0)
    with pytest.raises(ValueError, match=">= 0"):
        CropResize(-1, 0, 10, 10)
    with pytest.raises(ValueError, match="intrinsics say"):
        crop_resize(np.zeros((10, 10, 3), np.uint8), intr, CropResize())
    assert center_crop(640, 480) == CropResize(80, 0, 480, 480)


def test_intrinsics_validation():
    with pytest.raises(ValueError, match="finite"):
        _intr(fx=float("nan"))
    with pytest.raises(ValueError, match="> 0"):
        _intr(fy=-1.0)
    with pytest.raises(ValueError, match="coefficients"):
        _intr(coeffs=(0.0, 0.0))
    with pytest.raises(ValueError, match="size"):
        _intr(width=0)


# --- device clock -> host clock ----------------------------------------------------------------------------
def test_device_clock_mapping_removes_latency_jitter_and_stays_monotonic():
    rng = np.random.default_rng(1)
    mapper = DeviceClockMapper()
    device0, host0 = 1234.5, 1_700_000_000.0  # camera counts from power-on, host from the epoch
    min_latency = 0.004
    stamps, truth = [], []
    for k in range(600):
        capture = host0 + k / 30.0
        drift = 20e-6 * (k / 30.0)  # a 20 ppm slower device clock
        device = device0 + k / 30.0 - drift
        latency = min_latency + rng.exponential(0.012)
        stamps.append(mapper.map_ns(device, int((capture + latency) * 1e9)) * 1e-9)
        truth.append(capture + min_latency)
    stamps, truth = np.array(stamps), np.array(truth)
    assert np.all(np.diff(stamps) > 0)
    err = np.abs(stamps[60:] - truth[60:])
    assert err.max() < 0.003, f"stamp error up to {err.max() * 1e3:.2f} ms (latency jitter is ~12 ms)"


def test_device_clock_reset_on_jump_keeps_output_monotonic():
    mapper = DeviceClockMapper()
    out = [mapper.map_ns(100.0 + k / 30, int((5000 + k / 30) * 1e9)) for k in range(10)]
    # reconnect: device clock restarts from ~0, host keeps going
    out += [mapper.map_ns(0.5 + k / 30, int((5000.5 + k / 30) * 1e9)) for k in range(10)]
    assert mapper.resets >= 1
    assert all(b > a for a, b in zip(out, out[1:], strict=False))
    assert abs(out[-1] * 1e-9 - (5000.5 + 9 / 30)) < 0.01
    with pytest.raises(ValueError, match="finite"):
        mapper.map_ns(float("nan"), 0)


# --- RealSense backend on a software device ----------------------------------------------------------------
@pytest.fixture
def software():
    sw = SoftwareRealSense(["1111", "2222"], width=W, height=H, fps=30, depth=True)
    yield sw
    sw.close()


def _camera(sw, serial="1111", **kw) -> RealSenseCamera:
    cfg = dict(serial=serial, width=W, height=H, enable_depth=True, depth_width=W, depth_height=H)
    cfg.update(kw)
    return RealSenseCamera(RealSenseConfig(**cfg), sw, name="wrist")


def test_backend_color_byte_identical_and_depth_aligned(software):
    cam = _camera(software)
    with cam:
        assert same_intrinsics(cam.intrinsics, software.intrinsics)
        frames = []
        # under CPU load the syncer may hand out a color frame before its depth partner: read until 6 pairs
        while sum(f.depth is not None for f in frames) < 6 and len(frames) < 60:
            frames.append(cam.read(2.0))
    numbers = [f.frame_number for f in frames]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    for f in frames:
        assert f.color.dtype == np.uint8 and f.color.shape == (H, W, 3)
        assert np.array_equal(f.color, pattern_color(f.frame_number, W, H))
    with_depth = [f for f in frames if f.depth is not None]
    assert len(with_depth) >= 6
    for f in with_depth:
        expected = pattern_depth(f.frame_number, W, H)
        valid = f.depth > 0  # rs.align leaves rounding holes (zeros) and may shift a value by one pixel
        diff = np.abs(f.depth[valid].astype(int) - expected[valid])
        assert valid.mean() > 0.9 and (diff == 0).mean() > 0.8, ((diff == 0).mean(), valid.mean())
        assert diff.max() <= 2, "aligned depth must come from the same place (ramp: 1 mm per pixel)"


def test_backend_errors_name_what_is_there(software):
    with pytest.raises(CameraNotFoundError, match=r"serial '9999'.*'1111', '2222'"):
        _camera(software, serial="9999").open()
    with pytest.raises(CameraError, match=r"no stream.color format.rgb8 mode 1280x720@30; available: \['96x72@30'\]"):
        _camera(software, width=1280, height=720).open()
    with pytest.raises(CameraNotFoundError, match="no RealSense camera|serial"):
        RealSenseCamera(RealSenseConfig(serial="000000000000"), UsbDeviceFactory()).open()  # no USB camera here
    with pytest.raises(ValueError, match="fps"):
        RealSenseConfig(fps=0)


def test_backend_unplug_raises_disconnected_then_reopens(software):
    cam = _camera(software, enable_depth=False)
    cam.open()
    cam.read(2.0)
    software.unplug("1111")
    with pytest.raises(CameraDisconnectedError, match="no frame"):
        for _ in range(10):
            cam.read(0.3)
    cam.close()
    with pytest.raises(CameraNotFoundError):
        cam.open()
    software.replug("1111")
    cam.open()
    assert np.array_equal((f := cam.read(2.0)).color, pattern_color(f.frame_number, W, H))
    cam.close()


def test_stream_reconnects_after_usb_drop(software):
    frames, states = [], []
    cam = _camera(software, serial="2222", enable_depth=False)
    stream = CameraStream(cam, frames.append, lambda s, m: states.append(s), StreamConfig(0.3, 0.1))
    stream.start()
    try:
        _wait(lambda: len(frames) >= 5)
        software.unplug("2222")
        _wait(lambda: stream.state == LOST)
        count = len(frames)
        software.replug("2222")
        _wait(lambda: len(frames) >= count + 5)
    finally:
        stream.stop()
    assert stream.reconnects == 1 and software.plug_count["2222"] == 2
    assert states[:3] == [STREAMING, LOST, LOST] and STREAMING in states[3:]
    assert all(np.array_equal(f.color, pattern_color(f.frame_number, W, H)) for f in frames)


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


def record_db3(path, images, intrinsics: Intrinsics, serial="5555", period_ms=33.3):
    """Record `images` into a .db3 through rs.recorder wrapping a software device (as rs-record would)."""
    sw = SoftwareRealSense([serial], width=intrinsics.width, height=intrinsics.height, fps=30,
                           intrinsics=intrinsics, feed=False)
    device = sw(serial)
    recorder = rs.recorder(str(path), device)
    sensor = recorder.query_sensors()[0]
    got = []
    sensor.open(sensor.get_stream_profiles()[0])
    sensor.start(lambda f: got.append(f.get_frame_number()))
    t0 = time.time() * 1000
    for k, img in enumerate(images):  # at the camera's pace: the recorder keeps arrival times
        sw.push(serial, img, timestamp_ms=t0 + k * period_ms)
        time.sleep(period_ms * 1e-3)
    _wait(lambda: len(got) == len(images))
    sensor.stop()
    sensor.close()
    del sensor, recorder, device
    sw.close()


def test_playback_of_a_recording_is_byte_identical_then_ends(tmp_path):
    intr = Intrinsics(W, H, 80.5, 81.25, 47.0, 36.5, coeffs=(0.05, -0.01, 0.001, -0.002, 0.0))
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(12)]
    path = tmp_path / "rec.db3"
    record_db3(path, images, intr)
    cam = RealSenseCamera(RealSenseConfig(width=W, height=H), PlaybackDeviceFactory(path, real_time=False))
    cam.open()
    assert same_intrinsics(cam.intrinsics, intr) and cam.serial == "5555"
    got = []
    with pytest.raises(CameraEndOfStreamError):
        while True:
            got.append(cam.read(1.0))
    cam.close()
    assert [f.frame_number for f in got] == list(range(12))
    assert all(np.array_equal(f.color, images[f.frame_number]) for f in got)
    assert np.allclose(np.diff([f.device_time_s for f in got]), 0.0333, atol=1e-3)
    with pytest.raises(CameraNotFoundError, match="does not exist"):
        PlaybackDeviceFactory(tmp_path / "missing.db3")("")
    (tmp_path / "junk.db3").write_bytes(b"not a recording")
    with pytest.raises(CameraNotFoundError, match="cannot read"):
        PlaybackDeviceFactory(tmp_path / "junk.db3")("")


def test_stream_finishes_or_loops_at_end_of_recording(tmp_path):
    intr = Intrinsics(W, H, 80.0, 80.0, 47.5, 35.5)
    images = [pattern_color(k, W, H) for k in range(5)]
    path = tmp_path / "rec.db3"
    record_db3(path, images, intr)
    for loop in (False, True):
        frames = []
        cam = RealSenseCamera(RealSenseConfig(width=W, height=H), PlaybackDeviceFactory(path, real_time=True))
        stream = CameraStream(cam, frames.append, config=StreamConfig(0.5, 0.1, loop=loop))
        stream.start()
        try:
            if loop:
                _wait(lambda frames=frames: len(frames) >= 12)
            else:
                _wait(lambda stream=stream: stream.state == FINISHED)
        finally:
            stream.stop()
        assert all(np.array_equal(f.color, images[pattern_frame_number(f.color)]) for f in frames)
        assert (len(frames) == 5) if not loop else ([pattern_frame_number(f.color) for f in frames[:10]]
                                                    == [0, 1, 2, 3, 4] * 2)


def test_pattern_encodes_frame_number():
    img = pattern_color(123456789, W, H)
    assert pattern_frame_number(img) == 123456789
    assert not np.array_equal(pattern_color(1, W, H), pattern_color(2, W, H))
    assert cv2.mean(img)[0] > 50  # noise, not a blank image
