"""ROS-free core: importable without rclpy (SFT servers, benchmarks and tests use it directly)."""
