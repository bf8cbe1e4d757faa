#!/usr/bin/env bash
# Idempotent bootstrap of .venv-metaworld: the environment bench/metaworld.py runs in.
#
# Why a second venv: MetaWorld 3.1.1 pins mujoco==3.3.0 while the main .venv has mujoco 4.0.0 (franky-sim).
# This venv holds MetaWorld (+ its mujoco pin), the same CPU torch wheel and ML versions as the main venv
# (taken from requirements/lock.txt), and irevla_ros installed editable WITHOUT dependencies: bench/metaworld.py only
# imports irevla_ros.core (ROS-free), so no rclpy, franky or pyrealsense2 is needed here.
# Packages come from the same package index as scripts/setup_env.sh (pip's own configuration); nothing downloads at
# run time. A second run only checks a stamp and takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv-metaworld}
PY=${PYTHON:-python3}
STAMP="$VENV/.setup-stamp"
METAWORLD=${METAWORLD_VERSION:-3.1.1}

# Debian libraries for MuJoCo offscreen rendering (EGL / OSMesa), as scripts/setup_env.sh installs them.
need=()
for pkg in libegl1 libosmesa6 libgl1; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "[setup-metaworld] installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${need[@]}" >/dev/null; }
fi

# The pins shared with the main venv: exactly the versions requirements/lock.txt resolved (torch==2.13.0 is the
# local CPU wheel; a range would pull a multi-GB CUDA build).
shared=(torch transformers tokenizers peft safetensors accelerate tqdm tensorboard pyarrow opencv-python-headless
        huggingface_hub)
pins=()
for name in "${shared[@]}"; do
  line=$(grep -i -E "^${name}==" requirements/lock.txt || true)
  [ -n "$line" ] || { echo "[setup-metaworld] $name is not pinned in requirements/lock.txt" >&2; exit 1; }
  pins+=("$line")
done

want=$( (echo "metaworld==$METAWORLD"; printf '%s\n' "${pins[@]}"; cat setup.py "$0") | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || { echo "[setup-metaworld] creating $VENV"; "$PY" -m venv "$VENV"; }
echo "[setup-metaworld] installing metaworld==$METAWORLD and the ML stack (a minute or two the first time)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip>=24" 2>&1 | grep -v "^WARNING: Location" || true
# One resolve for everything, so metaworld's own pins (mujoco==3.3.0, numpy, gymnasium) win where they conflict with
# nothing of ours, and a conflict fails loudly here rather than at run time.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "metaworld==$METAWORLD" "${pins[@]}" 2>&1 \
  | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 \
  | grep -v "^WARNING: Location" || true
MUJOCO_GL=${MUJOCO_GL:-egl} "$VENV/bin/python" - <<'EOF' || { echo "[setup-metaworld] the environment does not import; see the messages above" >&2; exit 1; }
import gymnasium as gym
import metaworld  # noqa: F401  (registers the Meta-World/* environments)
import metaworld.policies  # noqa: F401
import mujoco
import peft  # noqa: F401
import torch
import transformers  # noqa: F401

from irevla_ros.core.model.vla import VLAModel  # noqa: F401
from irevla_ros.core.rl.learner import OnlineLearner  # noqa: F401
from irevla_ros.core.sft.train import train  # noqa: F401

env = gym.make("Meta-World/MT1", env_name="button-press-v3")
env.reset(seed=0)
env.close()
print(f"[setup-metaworld] metaworld + mujoco {mujoco.__version__} + torch {torch.__version__} import and step")
EOF
"$VENV/bin/python" -m pip check >/dev/null 2>&1 || echo "[setup-metaworld] warning: pip check reports conflicts" >&2
echo "$want" > "$STAMP"
echo "[setup-metaworld] environment ready in $VENV (run: MUJOCO_GL=egl $VENV/bin/python bench/metaworld.py --help)"
