"""irevla_ros: a ROS 2 stack for iRe-VLA online improvement of VLA policies on a Franka Panda."""

__version__ = "0.1.0"
