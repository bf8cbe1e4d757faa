"""The core must import on an SFT server without ROS: import every core module with rclpy made unimportable."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = r"""
import importlib, pkgutil, sys
class BlockRos:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('rclpy', 'rosidl_runtime_py', 'launch', 'launch_ros') or \
           name.split('.')[0].endswith(('_msgs', '_srvs')):
            raise ImportError(f'ROS module {name} imported by the core')
sys.meta_path.insert(0, BlockRos())
import irevla_ros.core, irevla_ros.graph, irevla_ros.interfaces
names = [m.name for m in pkgutil.walk_packages(irevla_ros.core.__path__, 'irevla_ros.core.')]
for n in names:
    importlib.import_module(n)
print(len(names))
"""


def test_core_imports_without_rclpy():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.strip().splitlines()[-1]) >= 3
