"""Stage-1 online RL: SAC from demonstrations (RLPD) and PPO on the action head, with the VLM frozen.

ROS-free. `OnlineLearner` is what rl_node drives; `SACLearner` / `PPOLearner` are the algorithms
(`update(batch) -> stats`, `get_weights` / `load_weights`); `ReplayBuffer` the fp16 memory-mapped storage.
"""

from irevla_ros.core.rl.config import RLConfig
from irevla_ros.core.rl.learner import OnlineLearner
from irevla_ros.core.rl.ppo import PPOLearner
from irevla_ros.core.rl.replay import Batch, ReplayBuffer, bytes_per_transition
from irevla_ros.core.rl.sac import SACLearner
from irevla_ros.core.rl.weights import decode_head_weights, encode_head_weights, state_dict_sha256

__all__ = ["Batch", "OnlineLearner", "PPOLearner", "RLConfig", "ReplayBuffer", "SACLearner",
           "bytes_per_transition", "decode_head_weights", "encode_head_weights", "state_dict_sha256"]
