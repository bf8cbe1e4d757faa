"""The SAC learner's CUDA path: batches sampled and pinned in a worker thread, copied asynchronously, statistics
read without a wait per update. It must train exactly as the sequential path on the same GPU.

Needs a CUDA GPU: CI machines have none, so this file is skipped there (the skip names why); it runs on the lent
GPU machine (bench/gpu.sh).
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from rl_tasks import Reach  # noqa: E402
from test_rl_core import small_config  # noqa: E402

from irevla_ros.core.rl import OnlineLearner  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA learner path needs a CUDA GPU")


def _train(tmp_path, prefetch: bool) -> OnlineLearner:
    learner = OnlineLearner(small_config(tmp_path, device="cuda", prefetch_batches=prefetch))
    env = Reach(0)
    for _ in range(12):
        f = env.reset()
        while f is not None:
            t, f = env.step(f, env.expert(), intervention=bool(env.t % 3 == 0))
            learner.add_transition(t)
            learner.train()
    return learner


def test_prefetched_pinned_batches_train_as_the_sequential_path(tmp_path):
    sequential = _train(tmp_path / "seq", prefetch=False)  # each learner seeds torch as it starts
    prefetched = _train(tmp_path / "pre", prefetch=True)
    assert sequential._prefetcher is None and prefetched._prefetcher is not None
    assert prefetched.algo.updates == sequential.algo.updates > 0
    for k, v in sequential.algo.actor.state_dict().items():
        torch.testing.assert_close(prefetched.algo.actor.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)
    for learner in (sequential, prefetched):
        learner.close(checkpoint=False)
