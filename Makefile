# The two commands README.md opens with: `make sim` (main job) and `make test` (the test suite).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# DDS stays on loopback; tests pick their own ROS_DOMAIN_ID per run.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup sim test lint bench clean

setup:
	@bash scripts/setup_env.sh

sim: setup
	$(VENV)/bin/irevla sim $(SIM_ARGS)

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf build install log .pytest_cache .ruff_cache
