"""Command handling shared by nodes: the teleop/policy command mux (ROS-free)."""
