"""`irevla calibrate`: offline solve from a samples folder, clear failures, the printable board, and live capture
over real DDS (the test plays the franka node and the camera: EE poses + rendered ChArUco images + CameraInfo)."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import CameraInfo, Image
from test_calibration import (
    EYE_IN_HAND,
    EYE_TO_HAND,
    INTR,
    RENDERED_DEG,
    RENDERED_MM,
    SPEC,
    error_mm_deg,
    scenario,
    truth,
)

from irevla_ros import interfaces as itf
from irevla_ros.camera.base import Intrinsics
from irevla_ros.camera.calibrate import SAMPLES_FILE, Sample, append_sample, save_intrinsics
from irevla_ros.camera.calibration import load_calibration
from irevla_ros.camera.charuco import board_image, detect_board, render_view
from irevla_ros.camera.messages import camera_info_msg, image_msg
from irevla_ros.camera.transforms import from_rvec, make_transform, quaternion_from_matrix
from irevla_ros.cli import main as irevla
from irevla_ros.nodes._common import IMAGE_QOS, STATE_QOS


def write_samples(folder, mode: str, n: int, seed: int = 5, robot=None, intr: Intrinsics = INTR) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    robot_true, boards = scenario(mode, n, seed=seed)
    save_intrinsics(folder, intr)
    for i, (T, B) in enumerate(zip(robot if robot is not None else robot_true, boards, strict=True)):
        append_sample(folder, Sample(render_view(SPEC, intr, B, noise_std=2.0, rng=rng), T), i)


@pytest.mark.parametrize("camera,mode", [("wrist", EYE_IN_HAND), ("front", EYE_TO_HAND)])
def test_solve_from_samples_writes_a_calibration_file(tmp_path, capsys, camera, mode):
    write_samples(tmp_path / "s", mode, 10)
    out = tmp_path / "calibration" / f"{camera}.yaml"
    assert irevla(["calibrate", "hand-eye", "--camera", camera, "--samples", str(tmp_path / "s"),
                   "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{mode} (" in printed and "reprojection rms" in printed and f"wrote {out}" in printed
    calib = load_calibration(out)
    parent = itf.EE_FRAME if mode == EYE_IN_HAND else itf.BASE_FRAME
    assert (calib.parent_frame, calib.child_frame) == (parent, itf.camera_optical_frame(camera))
    dt, dr = error_mm_deg(truth(mode)[0], calib.matrix)
    assert dt < RENDERED_MM and dr < RENDERED_DEG
    assert calib.extra["board"]["square_length_m"] == SPEC.square_length_m
    assert calib.residuals["reprojection_rms_px"] < 0.5 and calib.num_samples == 10
    assert irevla(["calibrate", "show", str(out)]) == 0
    assert f"child_frame: {itf.camera_optical_frame(camera)}" in capsys.readouterr().out


def test_degenerate_or_bad_samples_fail_clearly_and_write_nothing(tmp_path, capsys):
    robot, _ = scenario(EYE_IN_HAND, 8)
    translated = [make_transform(robot[0][:3, :3], T[:3, 3]) for T in robot]  # orientation never changes
    write_samples(tmp_path / "s", EYE_IN_HAND, 8, robot=translated)
    out = tmp_path / "wrist.yaml"
    assert irevla(["calibrate", "hand-eye", "--samples", str(tmp_path / "s"), "--out", str(out)]) == 1
    assert "degenerate pose set" in capsys.readouterr().err and not out.exists()
    lines = (tmp_path / "s" / SAMPLES_FILE).read_text().splitlines()
    (tmp_path / "s" / SAMPLES_FILE).write_text("\n".join([lines[0].replace("[", "[NaN, ", 1)] + lines[1:]))
    assert irevla(["calibrate", "hand-eye", "--samples", str(tmp_path / "s"), "--out", str(out)]) == 1
    assert "samples.jsonl:1" in capsys.readouterr().err and not out.exists()
    assert irevla(["calibrate", "hand-eye", "--samples", str(tmp_path / "nothing"), "--out", str(out)]) == 1
    assert "capture samples first" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("camera: wrist\n")
    assert irevla(["calibrate", "show", str(tmp_path / "bad.yaml")]) == 1
    assert "missing field" in capsys.readouterr().err


def test_wrong_square_length_is_refused_by_the_residual_check(tmp_path, capsys):
    """A board measured wrong (scale error) gives inconsistent translations: the residual gate refuses it."""
    write_samples(tmp_path / "s", EYE_IN_HAND, 10)
    out = tmp_path / "wrist.yaml"
    code = irevla(["calibrate", "hand-eye", "--samples", str(tmp_path / "s"), "--out", str(out),
                   "--square-length", "0.05", "--marker-length", "0.0375", "--max-residual-mm", "3"])
    assert code == 1 and "not written" in capsys.readouterr().err and not out.exists()


def test_printable_board_is_detectable(tmp_path, capsys):
    out = tmp_path / "board.png"
    assert irevla(["calibrate", "board", "--out", str(out), "--pixels-per-square", "80"]) == 0
    assert "40.0 mm" in capsys.readouterr().out
    image = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    assert image.shape == (5 * 80 + 80, 7 * 80 + 80)
    printed = Intrinsics(image.shape[1], image.shape[0], 1000.0, 1000.0, image.shape[1] / 2, image.shape[0] / 2)
    detection = detect_board(np.repeat(image[..., None], 3, axis=2), printed, SPEC)
    assert detection is not None and len(detection.corners) == 24
    assert np.array_equal(board_image(SPEC, 80, 40), image)


def test_live_capture_over_ros_then_solve(ros, procs, tmp_path):
    """The CLI subscribes /franka/ee_pose and the wrist camera topics, takes a sample whenever the robot holds still
    somewhere new (--auto), then solves: the test publishes what franka_node and camera_node would."""
    small = Intrinsics(320, 240, 302.5, 302.0, 160.4, 119.05)
    robot, boards = scenario(EYE_IN_HAND, 8, seed=11)
    rng = np.random.default_rng(0)
    images = [render_view(SPEC, small, B, noise_std=1.0, rng=rng) for B in boards]
    assert all(detect_board(img, small, SPEC) is not None for img in images), "scenario must be visible at 320x240"
    pose_pub = ros.node.create_publisher(PoseStamped, itf.EE_POSE.name, STATE_QOS)
    image_pub = ros.node.create_publisher(Image, itf.camera_image("wrist").name, IMAGE_QOS)
    info_pub = ros.node.create_publisher(CameraInfo, itf.camera_info("wrist").name, IMAGE_QOS)
    frame = itf.camera_optical_frame("wrist")
    stop = threading.Event()

    def play() -> None:
        k = 0
        while not stop.is_set():
            T = robot[k % len(robot)]
            q = quaternion_from_matrix(T[:3, :3])
            hold_until = time.monotonic() + 1.0
            tick = 0
            while time.monotonic() < hold_until and not stop.is_set():
                msg = PoseStamped()
                msg.header.frame_id = itf.BASE_FRAME
                msg.header.stamp = ros.node.get_clock().now().to_msg()
                msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in T[:3, 3])
                (msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z,
                 msg.pose.orientation.w) = (float(v) for v in q)
                pose_pub.publish(msg)
                if tick % 5 == 0:
                    now = ros.node.get_clock().now().nanoseconds
                    image_pub.publish(image_msg(images[k % len(images)], "rgb8", now, frame))
                    info_pub.publish(camera_info_msg(small, now, frame))
                tick += 1
                time.sleep(0.02)
            # move: a few poses in between (the robot is not still)
            for alpha in (0.3, 0.6):
                moving = from_rvec([0, 0, 0.05 * alpha], [0.01 * alpha, 0, 0]) @ T
                msg.pose.position.x = float(moving[0, 3])
                pose_pub.publish(msg)
                time.sleep(0.02)
            k += 1

    player = threading.Thread(target=play, daemon=True)
    out = tmp_path / "wrist.yaml"
    proc = procs.start(["irevla", "calibrate", "hand-eye", "--camera", "wrist", "--capture", "6", "--auto",
                        "--still-s", "0.3", "--samples", str(tmp_path / "samples"), "--out", str(out),
                        "--timeout-s", "90"], name="calibrate", capture=True)
    player.start()
    try:
        output, _ = proc.communicate(timeout=120)
    finally:
        stop.set()
        player.join(5)
    assert proc.returncode == 0, output
    assert output.count("sample ") >= 6 and f"wrote {out}" in output
    lines = (tmp_path / "samples" / SAMPLES_FILE).read_text().splitlines()
    assert len(lines) == 6
    calib = load_calibration(out)
    dt, dr = error_mm_deg(truth(EYE_IN_HAND)[0], calib.matrix)
    assert dt < 2 * RENDERED_MM and dr < 2 * RENDERED_DEG, (dt, dr)  # half resolution, fewer samples


def test_intrinsics_subcommand_and_hand_eye_with_those_intrinsics(tmp_path, capsys):
    rng = np.random.default_rng(1)
    _, boards = scenario(EYE_IN_HAND, 10, seed=8)
    (tmp_path / "views").mkdir()
    for i, B in enumerate(boards):
        cv2.imwrite(str(tmp_path / "views" / f"{i}.png"), render_view(SPEC, INTR, B, noise_std=2.0, rng=rng))
    assert irevla(["calibrate", "intrinsics", "--images", str(tmp_path / "views"), "--out",
                   str(tmp_path / "intr.yaml"), "--no-distortion"]) == 0
    assert "rms" in capsys.readouterr().out
    write_samples(tmp_path / "s", EYE_IN_HAND, 10)
    (tmp_path / "s" / "intrinsics.yaml").unlink()  # the camera gave none: use the fallback file
    out = tmp_path / "wrist.yaml"
    assert irevla(["calibrate", "hand-eye", "--samples", str(tmp_path / "s"), "--intrinsics",
                   str(tmp_path / "intr.yaml"), "--out", str(out)]) == 0
    dt, dr = error_mm_deg(truth(EYE_IN_HAND)[0], load_calibration(out).matrix)
    assert dt < 3 * RENDERED_MM and dr < 3 * RENDERED_DEG, (dt, dr)  # intrinsics estimated, not exact
    assert irevla(["calibrate", "intrinsics", "--images", str(tmp_path / "nothing"), "--out",
                   str(tmp_path / "x.yaml")]) == 1
    assert "no PNG/JPG images" in capsys.readouterr().err
