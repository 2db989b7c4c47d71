"""panet_lite: PANet (ICCV 2019) few-shot segmentation, rebuilt to learn from and to reproduce."""
from .data import IGNORE, fold_classes, normalize, train_classes
from .episodes import Episode, EpisodeDataset, hsnet_episodes, sample_episodes
from .inference import segment
from .metrics import IoUMeter
from .model import PANet, PANetOutput
from .paper import LATER_RESULTS, PAPER_RESULTS, paper_result

__version__ = "0.1.0"
__all__ = [
    "IGNORE", "Episode", "EpisodeDataset", "IoUMeter", "LATER_RESULTS", "PANet", "PANetOutput", "PAPER_RESULTS",
    "fold_classes", "hsnet_episodes", "normalize", "paper_result", "sample_episodes", "segment", "train_classes",
]
