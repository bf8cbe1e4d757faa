"""Child process for test_rl_resume: learns, checkpoints, keeps writing, and waits to be killed with SIGKILL.

usage: rl_kill_worker.py RUN_DIR OUT_DIR MODE
MODE once:  checkpoint once after 30 steps, record its fingerprint, then keep ingesting + training forever
            (the ring wraps, so steps the checkpoint knows are overwritten: the undo log must restore them).
MODE many: checkpoint every few updates forever, recording each checkpoint's fingerprint after it is written.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from rl_tasks import DIM, TOKENS, Reach  # noqa: E402

from irevla_ros.core.rl import OnlineLearner, RLConfig, bytes_per_transition  # noqa: E402


def config(run_dir: str) -> RLConfig:
    per = bytes_per_transition((TOKENS, DIM), 0)
    return RLConfig(run_dir=run_dir, feature_tokens=TOKENS, feature_dim=DIM, num_learned_tokens=2, hidden_dim=32,
                    batch_size=16, warmup_transitions=8, utd_ratio=1.0, tensorboard=False, seed=3,
                    online_capacity_bytes=40 * per, demo_capacity_bytes=20 * per, checkpoint_every_s=1e6)


def write_json(path: Path, value) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def main() -> None:
    run_dir, out, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)
    learner = OnlineLearner(config(run_dir))
    env = Reach(5)
    checkpoints: dict[str, dict] = {}
    written_after = 0
    while True:
        f = env.reset()
        while f is not None:
            t, f = env.step(f, env.expert() * 0.5, intervention=env.t % 4 == 1)
            learner.add_transition(t)
            learner.train()
            n = learner.counters["transitions"]
            if mode == "once" and not checkpoints and n >= 30:
                name = learner.checkpoint()
                checkpoints[name] = learner.fingerprint()
                write_json(out / "checkpoints.json", checkpoints)
            elif mode == "once" and checkpoints:
                written_after += 1
                write_json(out / "progress.json", {"written_after": written_after})
            elif mode == "many" and learner.algo.updates and learner.algo.updates % 5 == 0:
                name = learner.checkpoint()
                checkpoints[name] = learner.fingerprint()
                write_json(out / "checkpoints.json", checkpoints)


if __name__ == "__main__":
    main()
