"""Offboard supervised fine-tuning (stage 0 / stage 2): jobs, training, the spool worker. No ROS imports."""
