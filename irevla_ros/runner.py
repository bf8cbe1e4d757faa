"""`irevla launch PROFILE [name:=value ...]`: run a graph profile where `ros2 launch` does not exist.

Same NodeSpecs as the launch files (irevla_ros/graph.py): one process per node, same executables, parameter
files, overrides and remaps. Logs are prefixed with the node name; SIGINT/SIGTERM are forwarded; when a required
node dies the whole graph is shut down and the runner exits non-zero naming it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from irevla_ros import graph

GRACE_S = 10.0
"""After SIGINT, how long nodes get to finish (flush episodes, checkpoints) before SIGTERM, then SIGKILL."""


def parse_launch_args(items: Sequence[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in items:
        if ":=" not in item:
            raise ValueError(f"launch arguments look like name:=value, got {item!r}")
        name, value = item.split(":=", 1)
        values[name.strip()] = value
    return values


def find_executable(name: str) -> str:
    """Console scripts live next to the interpreter in a venv; on a colcon install under lib/irevla_ros."""
    here = Path(sys.executable).parent
    for candidate in (here / name, Path(sys.prefix) / "lib" / graph.PACKAGE / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"executable {name!r} not found next to {sys.executable} or on PATH; "
                                f"is irevla_ros installed (make setup / pip install -e .)?")
    return found


def node_command(spec: graph.NodeSpec, args: Mapping[str, str], override_dir: Path) -> list[str]:
    """The exact command line for one NodeSpec (what launch_ros would run for the same Node)."""
    exe = find_executable(spec.executable)
    if spec.kind == "process":
        return [exe, *spec.arguments]
    cmd = [exe, *spec.arguments, "--ros-args", "-r", f"__node:={spec.name}"]
    for path in graph.parameter_file_paths(spec, args):
        if not path.is_file():
            raise FileNotFoundError(f"parameter file {path} for node {spec.name!r} does not exist")
        cmd += ["--params-file", str(path)]
    if spec.parameters:
        overrides = {k: graph.substitute(v, args) for k, v in spec.parameters.items()}
        override_file = override_dir / f"{spec.name}.overrides.yaml"
        override_file.write_text(yaml.safe_dump({spec.name: {"ros__parameters": overrides}}))
        cmd += ["--params-file", str(override_file)]
    for src, dst in spec.remappings:
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


@dataclass
class Running:
    spec: graph.NodeSpec
    proc: subprocess.Popen
    reader: threading.Thread


class GraphRunner:
    def __init__(self, specs: Sequence[graph.NodeSpec], args: Mapping[str, str], *, out=sys.stdout):
        self.specs = [s for s in specs]
        self.args = dict(args)
        self.out = out
        self.running: list[Running] = []
        self._stopping = threading.Event()
        self._print_lock = threading.Lock()
        self._tmp = tempfile.TemporaryDirectory(prefix="irevla-launch-")
        self.width = max((len(s.name) for s in self.specs), default=8)

    def log(self, name: str, line: str) -> None:
        with self._print_lock:
            print(f"[{name:<{self.width}}] {line}", file=self.out, flush=True)

    def _pump(self, name: str, stream) -> None:
        for line in iter(stream.readline, ""):
            self.log(name, line.rstrip("\n"))
        stream.close()

    def start(self) -> None:
        override_dir = Path(self._tmp.name)
        commands = [(spec, node_command(spec, self.args, override_dir)) for spec in self.specs]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for spec, cmd in commands:
            # Own session: a terminal Ctrl-C reaches only the runner, which forwards it in order.
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                    start_new_session=True, bufsize=1)
            reader = threading.Thread(target=self._pump, args=(spec.name, proc.stdout), daemon=True)
            reader.start()
            self.running.append(Running(spec, proc, reader))
            self.log("launch", f"started {spec.name} (pid {proc.pid}): {' '.join(cmd)}")

    def request_stop(self, *_sig) -> None:
        self._stopping.set()

    def wait(self) -> int:
        """Block until a stop is requested or a required node exits. Returns the runner's exit code."""
        exit_code = 0
        reported: set[int] = set()
        while not self._stopping.is_set():
            for r in self.running:
                code = r.proc.poll()
                if code is None or r.proc.pid in reported:
                    continue
                reported.add(r.proc.pid)
                if r.spec.required:
                    self.log("launch", f"required node {r.spec.name!r} exited with code {code}: "
                                       "shutting the graph down")
                    exit_code = 1
                    self._stopping.set()
                else:
                    self.log("launch", f"optional node {r.spec.name!r} exited with code {code}")
            if all(r.proc.poll() is not None for r in self.running):
                break
            self._stopping.wait(0.1)
        self.shutdown()
        return exit_code

    def shutdown(self) -> None:
        alive = [r for r in self.running if r.proc.poll() is None]
        for r in alive:
            self._signal(r, signal.SIGINT)
        deadline = time.monotonic() + GRACE_S
        for sig, until in ((signal.SIGTERM, deadline), (signal.SIGKILL, deadline + 5.0)):
            for r in alive:
                try:
                    r.proc.wait(max(0.0, until - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.log("launch", f"{r.spec.name} did not stop in time: sending {sig.name}")
                    self._signal(r, sig)
        for r in self.running:
            r.proc.wait()
            r.reader.join(2.0)
        self._tmp.cleanup()

    @staticmethod
    def _signal(r: Running, sig: int) -> None:
        try:
            os.killpg(r.proc.pid, sig)
        except ProcessLookupError:
            pass


def _profiles_help() -> str:
    def arg_line(a: graph.LaunchArgSpec) -> str:
        choices = f" {{{','.join(a.choices)}}}" if a.choices else ""
        default = a.default or '""'
        return f"    {a.name}:={default}{choices}  {a.description}"

    lines = ["profiles:"]
    for profile in graph.PROFILES.values():
        lines.append(f"  {profile.name:<13} {profile.description}")
        lines += [arg_line(a) for a in profile.extra_args]
    lines.append("launch arguments of every profile (name:=value, default shown):")
    lines += [arg_line(a) for a in graph.COMMON_ARGS]
    lines.append("example: irevla launch online_rl sim:=fast run_dir:=runs/try1")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _profiles_help()
    parser.add_argument("profile", choices=sorted(graph.PROFILES), help="which graph to run")
    parser.add_argument("launch_args", nargs="*", metavar="name:=value", help="launch arguments (see below)")
    parser.add_argument("--dry-run", action="store_true", help="print the node command lines and exit")


def run(ns: argparse.Namespace) -> int:
    try:
        specs, args = graph.build(ns.profile, parse_launch_args(ns.launch_args))
        runnable = [s for s in specs if s.package == graph.PACKAGE]
        for s in specs:
            if s.package != graph.PACKAGE:
                print(f"[launch] skipping {s.name}: package {s.package!r} needs a full ROS 2 install "
                      "(use ros2 launch there)", file=sys.stderr)
        runner = GraphRunner(runnable, args)
        if ns.dry_run:
            with tempfile.TemporaryDirectory() as tmp:
                for s in runnable:
                    print(f"{s.name}: {' '.join(node_command(s, args, Path(tmp)))}")
            return 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"irevla launch: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, runner.request_stop)
    signal.signal(signal.SIGTERM, runner.request_stop)
    try:
        runner.start()
    except (OSError, FileNotFoundError) as exc:
        print(f"irevla launch: {exc}", file=sys.stderr)
        runner.shutdown()
        return 2
    return runner.wait()
