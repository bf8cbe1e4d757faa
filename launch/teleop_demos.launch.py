"""ros2 launch irevla_ros teleop_demos.launch.py [sim:=none|faithful|fast] [robot_ip:=...] ...

The nodes come from irevla_ros/graph.py (profile 'teleop_demos'), the description `irevla launch teleop_demos` runs too.
"""

from irevla_ros.launch_support import generate_for_profile


def generate_launch_description():
    return generate_for_profile("teleop_demos")
