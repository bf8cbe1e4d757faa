"""Crop + resize an image and adjust its intrinsics so CameraInfo keeps describing the published pixels.

ROS-free, shared by the RealSense node and the sim cameras so both publish the same geometry. Conventions are
OpenCV's and ROS CameraInfo's: pixel centres at integer coordinates; `cv2.resize` maps source pixel centre x to
(x + 0.5) * scale - 0.5, so the principal point follows the same map and focal lengths scale by `scale`.
Distortion coefficients act on normalized coordinates and are unchanged by crops and resizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

from irevla_ros.camera.base import Intrinsics


@dataclass(frozen=True)
class CropResize:
    """Crop box (x, y, width, height; width 0 = no crop) then output size (0 = keep)."""

    crop_x: int = 0
    crop_y: int = 0
    crop_width: int = 0
    crop_height: int = 0
    output_width: int = 0
    output_height: int = 0

    def __post_init__(self) -> None:
        for name in ("crop_x", "crop_y", "crop_width", "crop_height", "output_width", "output_height"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if (self.crop_width == 0) != (self.crop_height == 0):
            raise ValueError(f"crop_width and crop_height must both be 0 (no crop) or both > 0, got "
                             f"{self.crop_width}x{self.crop_height}")
        if (self.output_width == 0) != (self.output_height == 0):
            raise ValueError(f"output_width and output_height must both be 0 (keep size) or both > 0, got "
                             f"{self.output_width}x{self.output_height}")
        if self.crop_width == 0 and (self.crop_x or self.crop_y):
            raise ValueError(f"crop_x/crop_y ({self.crop_x}, {self.crop_y}) given without crop_width/crop_height")

    @property
    def is_identity(self) -> bool:
        return self.crop_width == 0 and self.output_width == 0

    def check_fits(self, width: int, height: int) -> None:
        """Raise ValueError if the crop box does not lie inside a width x height image."""
        if self.crop_width and (self.crop_x + self.crop_width > width or self.crop_y + self.crop_height > height):
            raise ValueError(f"crop box x={self.crop_x} y={self.crop_y} {self.crop_width}x{self.crop_height} does "
                             f"not fit in the {width}x{height} image")


def center_crop(width: int, height: int, aspect: float = 1.0) -> CropResize:
    """The largest centred crop of a width x height image with the given aspect ratio (width / height)."""
    if not (np.isfinite(aspect) and aspect > 0):
        raise ValueError(f"aspect must be > 0, got {aspect!r}")
    crop_w = min(width, int(round(height * aspect)))
    crop_h = min(height, int(round(crop_w / aspect)))
    return CropResize((width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h)


def adjust_intrinsics(intrinsics: Intrinsics, op: CropResize) -> Intrinsics:
    """Intrinsics of the image `crop_resize` produces."""
    op.check_fits(intrinsics.width, intrinsics.height)
    width, height, cx, cy = intrinsics.width, intrinsics.height, intrinsics.cx, intrinsics.cy
    fx, fy = intrinsics.fx, intrinsics.fy
    if op.crop_width:
        cx, cy = cx - op.crop_x, cy - op.crop_y
        width, height = op.crop_width, op.crop_height
    if op.output_width:
        sx, sy = op.output_width / width, op.output_height / height
        fx, fy = fx * sx, fy * sy
        cx, cy = (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5
        width, height = op.output_width, op.output_height
    return dataclasses.replace(intrinsics, width=int(width), height=int(height), fx=fx, fy=fy, cx=cx, cy=cy)


def crop_resize(image: np.ndarray, intrinsics: Intrinsics, op: CropResize, *,
                nearest: bool = False) -> tuple[np.ndarray, Intrinsics]:
    """Apply `op` to an HxW[xC] image described by `intrinsics`; return the new image and its intrinsics.

    `nearest=True` for depth (never blend depths across edges); otherwise area averaging when shrinking (no
    aliasing) and linear when enlarging. The input is never modified; identity returns the input unchanged.
    """
    if image.shape[:2] != (intrinsics.height, intrinsics.width):
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but intrinsics say "
                         f"{intrinsics.width}x{intrinsics.height}")
    new_intrinsics = adjust_intrinsics(intrinsics, op)
    if op.is_identity:
        return image, new_intrinsics
    out = image
    if op.crop_width:
        out = out[op.crop_y:op.crop_y + op.crop_height, op.crop_x:op.crop_x + op.crop_width]
    if op.output_width and (out.shape[1], out.shape[0]) != (op.output_width, op.output_height):
        shrinking = op.output_width < out.shape[1] and op.output_height < out.shape[0]
        interpolation = cv2.INTER_NEAREST_EXACT if nearest else (cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        out = cv2.resize(out, (op.output_width, op.output_height), interpolation=interpolation)
    return np.ascontiguousarray(out), new_intrinsics
