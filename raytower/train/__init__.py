"""Loss, schedules, curriculum and metrics in plain PyTorch: no Ray import anywhere below here.

Importing the package imports nothing else: ``raytower.train.config`` (the TrainConfig dataclass,
standard library only) is what the command line reads before it parses, and torch comes in with
the names below, on first use.
"""

__all__ = ["Curriculum", "TrainConfig"]


def __getattr__(name: str):
    if name == "TrainConfig":
        from raytower.train.config import TrainConfig

        return TrainConfig
    if name == "Curriculum":
        from raytower.train.loop import Curriculum

        return Curriculum
    raise AttributeError(f"module 'raytower.train' has no attribute {name!r}")
