"""Success classifier for the sparse RL reward: model, versioned file, training, and the reward node's logic.

ROS-free (a test checks): `irevla train-reward` runs on any machine with torch.
"""

from irevla_ros.core.reward.data import FramesError, LabelledFrames, load_frames, save_frames
from irevla_ros.core.reward.io import ClassifierFileError, ClassifierWatcher, load_classifier, save_classifier
from irevla_ros.core.reward.metrics import BinaryMetrics, evaluate, pick_threshold
from irevla_ros.core.reward.model import ClassifierSpec, RewardClassifier
from irevla_ros.core.reward.runtime import FrameError, RewardGate, RewardNodeConfig, decode_rgb8
from irevla_ros.core.reward.train import TrainConfig, TrainResult, train_classifier

__all__ = [
    "BinaryMetrics", "ClassifierFileError", "ClassifierSpec", "ClassifierWatcher", "FrameError", "FramesError",
    "LabelledFrames", "RewardClassifier", "RewardGate", "RewardNodeConfig", "TrainConfig", "TrainResult",
    "decode_rgb8", "evaluate", "load_classifier", "load_frames", "pick_threshold", "save_classifier",
    "save_frames", "train_classifier",
]
