"""ros2 launch irevla_ros replay.launch.py [sim:=none|faithful|fast] [robot_ip:=...] ...

The nodes come from irevla_ros/graph.py (profile 'replay'), the description `irevla launch replay` runs too.
"""

from irevla_ros.launch_support import generate_for_profile


def generate_launch_description():
    return generate_for_profile("replay")
