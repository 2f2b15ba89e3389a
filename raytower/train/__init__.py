"""Loss, schedules, curriculum and metrics in plain PyTorch: no Ray import anywhere below here."""

from raytower.train.config import TrainConfig
from raytower.train.loop import Curriculum

__all__ = ["Curriculum", "TrainConfig"]
