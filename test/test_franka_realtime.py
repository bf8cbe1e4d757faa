"""libfranka lifts the thread it runs from to SCHED_FIFO 99 when it can (as root). With realtime_config 'ignore'
the franky backend must hand the thread back, or everything this process spawns starves the machine.

Its own module (and franky-sim instance): franky-sim serves one control client at a time.
"""

import os

import numpy as np
import pytest
from test_franka_backend import FrankySimHost

from irevla_ros.robot.franky_backend import FrankyConfig, FrankyRobot


@pytest.fixture(scope="module")
def franky_sim():
    host = FrankySimHost()
    yield host
    host.close()


@pytest.mark.timeout(120)
def test_backend_leaves_threads_on_normal_scheduling(franky_sim):
    robot = FrankyRobot(FrankyConfig(robot_ip=franky_sim.hostname, wait_for_robot_s=10.0))
    robot.connect()
    try:
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
        state = robot.read_state()
        robot.move_ee_async(state.ee_position + np.array([0.01, 0.0, 0.0]), state.ee_quaternion)
        robot.hold()
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
    finally:
        robot.close()
