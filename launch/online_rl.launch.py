"""ros2 launch irevla_ros online_rl.launch.py [sim:=none|faithful|fast] [robot_ip:=...] ...

The nodes come from irevla_ros/graph.py (profile 'online_rl'), the description `irevla launch online_rl` runs too.
"""

from irevla_ros.launch_support import generate_for_profile


def generate_launch_description():
    return generate_for_profile("online_rl")
