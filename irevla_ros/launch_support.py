"""Turn a graph profile (irevla_ros/graph.py) into a real `launch` LaunchDescription.

Imported only by the files in launch/ on a full ROS 2 install (launch and launch_ros are not on PyPI).
The node list is resolved inside an OpaqueFunction so launch arguments (sim:=..., robot_ip:=...) choose the
variant exactly as they do for `irevla launch`.
"""

from __future__ import annotations

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from irevla_ros import graph


def _actions_for(profile_name: str, context) -> list:
    profile = graph.PROFILES[profile_name]
    given = {a.name: LaunchConfiguration(a.name).perform(context) for a in profile.arguments}
    specs, args = graph.build(profile_name, given)
    actions = []
    for spec in specs:
        on_exit = [Shutdown(reason=f"required node {spec.name} exited")] if spec.required else None
        if spec.kind == "process":
            actions.append(ExecuteProcess(cmd=[spec.executable, *spec.arguments], name=spec.name, output="screen",
                                          on_exit=on_exit))
            continue
        parameters: list = [str(p) for p in graph.parameter_file_paths(spec, args)]
        if spec.parameters:
            parameters.append({k: graph.substitute(v, args) for k, v in spec.parameters.items()})
        actions.append(Node(package=spec.package, executable=spec.executable, name=spec.name, output="screen",
                            parameters=parameters, remappings=list(spec.remappings),
                            arguments=list(spec.arguments), on_exit=on_exit))
    return actions


def generate_for_profile(profile_name: str) -> LaunchDescription:
    profile = graph.PROFILES[profile_name]
    declared = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description,
                                      **({"choices": list(a.choices)} if a.choices else {}))
                for a in profile.arguments]
    return LaunchDescription([*declared, OpaqueFunction(function=lambda context: _actions_for(profile_name,
                                                                                               context))])
