"""rl_node over real DDS: SAC and PPO through the same node and config switch; transitions in, verified head
weights out; malformed payloads rejected with counted reasons; a restart resumes from the final checkpoint."""

from __future__ import annotations

import array
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import wait_for

sys.path.insert(0, str(Path(__file__).parent))
from rl_tasks import DIM, TOKENS, Bandit  # noqa: E402

from irevla_ros import interfaces as itf  # noqa: E402
from irevla_ros.core.data.codec import Transition, encode  # noqa: E402
from irevla_ros.core.model.head import ActionHead, HeadConfig  # noqa: E402
from irevla_ros.core.model.weights import decode_head_weights as policy_decode  # noqa: E402
from irevla_ros.core.rl import decode_head_weights  # noqa: E402


def node_cmd(run_dir: Path, algorithm: str) -> list[str]:
    params = {"algorithm": algorithm, "run_dir": str(run_dir), "feature_tokens": TOKENS, "feature_dim": DIM,
              "num_learned_tokens": 2, "hidden_dim": 32, "batch_size": 16, "warmup_transitions": 8,
              "utd_ratio": 1.0, "publish_every_updates": 5, "ppo_rollout_steps": 16, "ppo_minibatch_size": 8,
              "online_capacity_bytes": 1 << 20, "demo_capacity_bytes": 1 << 18, "tensorboard": True,
              "torch_threads": 1, "checkpoint_every_s": 3600.0}
    args = ["rl_node", "--ros-args"]
    for k, v in params.items():
        args += ["-p", f"{k}:={str(v).lower() if isinstance(v, bool) else v}"]
    return args


def payload_msg(payload: bytes):
    from std_msgs.msg import UInt8MultiArray

    msg = UInt8MultiArray()
    msg.data = array.array("B", payload)
    return msg


def publish_bandit(pub, env: Bandit, n: int) -> None:
    for _ in range(n):
        c, f = env.reset()
        a = np.clip(np.random.default_rng(env.episode).normal(0, 0.5, 7), -1, 1).astype(np.float32)
        pub.publish(payload_msg(env.transition(c, f, a, version="0").to_bytes()))


def test_ppo_then_sac_through_the_same_node_with_bad_input_and_resume(procs, ros, tmp_path):
    """PPO learns and publishes; a clean stop checkpoints; the same node restarted with algorithm:=sac resumes
    the run (counters, buffers, version, actor) and goes on learning with SAC."""
    from std_msgs.msg import String, UInt8MultiArray

    from irevla_ros.nodes._common import DATA_QOS, LATCHED_QOS

    run_dir = tmp_path / "run"
    node = procs.start(node_cmd(run_dir, "ppo"), name="rl_node-ppo")
    weights = ros.collect(UInt8MultiArray, itf.HEAD_WEIGHTS.name, LATCHED_QOS)
    status = ros.collect(String, itf.RL_STATUS.name, LATCHED_QOS)
    pub = ros.node.create_publisher(UInt8MultiArray, itf.TRANSITION.name, DATA_QOS)
    ros.wait_for_subscribers(pub, timeout=60)

    def last_status() -> dict:
        return json.loads(status[-1].data) if status else {}

    def wait(predicate, timeout: float, what: str) -> None:
        """wait_for, failing with the learner's last status and the node logs (diagnosable on CI)."""
        try:
            wait_for(predicate, timeout, what=what)
        except TimeoutError as exc:
            logs = "\n".join(procs.log_of(p)[-3000:] for p in procs.procs)
            raise AssertionError(f"{exc}; last status {last_status()}; {len(weights)} weights msgs\n{logs}") from exc

    # Both ends must have matched before anything is published: our writer seeing the node's reader is not
    # enough, a volatile reader that matches the writer later skips what was sent before (the flake this waits out).
    wait(lambda: last_status().get("transition_publishers", 0) >= 1, 60, what="the node matching our publisher")

    # Malformed input first: each is refused and counted by reason, the node keeps going.
    pub.publish(payload_msg(b"\x00garbage"))
    pub.publish(payload_msg(encode("head_weights", {"x": np.zeros(1, np.float32)}, {})))
    bad_shape = Transition("bad", 0, np.zeros((TOKENS + 1, DIM), np.float16), np.zeros(7, np.float32))
    pub.publish(payload_msg(bad_shape.to_bytes()))
    env = Bandit(0)
    publish_bandit(pub, env, 48)
    wait(lambda: weights and last_status().get("counters", {}).get("transitions", 0) == 48, 90,
         what="PPO head weights and all 48 transitions")
    tensors, meta = decode_head_weights(bytes(weights[-1].data))
    assert meta["algorithm"] == "ppo" and meta["version"] >= 1 and meta["updates"] > 0
    head_config = HeadConfig(**meta["head_config"])
    assert (head_config.feature_dim, head_config.num_learned_tokens) == (DIM, 2)
    state, version = policy_decode(bytes(weights[-1].data), expected=head_config)  # the policy node's decoder
    ActionHead(head_config).load_state_dict(state)
    assert version == str(meta["version"])
    s = last_status()
    assert s["rejected"] == {"corrupt": 1, "wrong_kind": 1, "feature_shape": 1}, s
    assert s["algorithm"] == "ppo" and s["online"] == 48

    # Clean shutdown writes a final checkpoint; restarted as SAC, the node resumes the run.
    node.send_signal(signal.SIGINT)
    try:
        node.wait(60)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"rl_node did not stop within 60 s of SIGINT\n{procs.log_of(node)[-3000:]}") from exc
    assert (run_dir / "rl" / "checkpoints" / "LATEST").is_file(), procs.log_of(node)
    assert list((run_dir / "rl" / "tb").glob("events.out.tfevents.*"))
    # The final checkpoint is the truth: the node may have run one more PPO iteration after its last status.
    latest = (run_dir / "rl" / "checkpoints" / "LATEST").read_text().strip()
    saved = json.loads((run_dir / "rl" / "checkpoints" / latest / "state.json").read_text())
    ppo_version = saved["version"]
    assert ppo_version >= 1 and saved["counters"]["transitions"] == 48
    status.clear()
    weights.clear()
    procs.start(node_cmd(run_dir, "sac"), name="rl_node-sac")
    wait(lambda: last_status().get("resumed_from"), 90, what="resumed status")
    # SAC may already have trained on the resumed buffer (and published) before our subscription matched: the
    # status reports what the run resumed with, apart from what it did since.
    resumed = last_status()
    assert resumed["algorithm"] == "sac" and resumed["resumed_from"] == latest
    assert resumed["resumed"]["version"] == ppo_version and resumed["resumed"]["online"] == 48
    assert resumed["resumed"]["counters"]["transitions"] == 48 and resumed["counters"]["transitions"] == 48
    wait(lambda: bool(weights), 30, what="re-published weights after resume")
    _, meta = decode_head_weights(bytes(weights[-1].data))
    assert meta["version"] >= ppo_version and meta["run_id"] == saved["run_id"]  # the same run goes on
    sac_version = last_status()["version"]
    ros.wait_for_subscribers(pub, timeout=60)
    wait(lambda: last_status().get("transition_publishers", 0) >= 1, 60, what="the restarted node matching us")
    publish_bandit(pub, env, 24)
    wait(lambda: decode_head_weights(bytes(weights[-1].data))[1]["version"] > max(ppo_version, sac_version), 90,
         what="new SAC head weights")
    _, meta = decode_head_weights(bytes(weights[-1].data))
    assert meta["algorithm"] == "sac" and meta["updates"] > 0
    wait(lambda: last_status()["counters"]["transitions"] == 72, 30, what="the 24 new transitions ingested")

    # Stage 2 announces a new model: a new stage (fresh buffers, head and features from the new folder).
    from irevla_ros.core.model.vla import VLAModel, folder_sha256

    folder = tmp_path / "model-sft-1"
    VLAModel.from_preset("tiny", seed=1).save_pretrained(folder)
    announce = ros.node.create_publisher(String, itf.FULL_WEIGHTS_READY.name, LATCHED_QOS)
    announce.publish(String(data=json.dumps({"path": str(folder), "version": "sft-1", "sha256": "0" * 64})))
    wait(lambda: "new model refused" in procs.log_of(procs.procs[-1]), 30, what="a bad announcement refused")
    announce.publish(String(data=json.dumps({"path": str(folder), "version": "sft-1",
                                             "sha256": folder_sha256(folder)})))
    wait(lambda: last_status().get("base_version") == "sft-1", 60, what="the new stage")
    stage = last_status()
    assert stage["online"] == 0 and stage["counters"].get("transitions", 0) == 0 and stage["version"] == 0
    assert list((run_dir / "rl").glob("buffers.stage-*"))
