"""Cameras: one interface (base.Camera), the RealSense backend (realsense), a software-device stand-in (software),
crop/resize with intrinsics (image_ops), device-clock mapping (timestamps), sensor_msgs conversions (messages),
ChArUco hand-eye calibration (charuco, handeye, calibration, calibrate = `irevla calibrate`).

Import the submodules you need: importing this package loads neither pyrealsense2 nor ROS.
"""
