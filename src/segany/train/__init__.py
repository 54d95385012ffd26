"""Training SAM with simulated interaction (see :mod:`segany.train.trainer`)."""

from .data import AugmentConfig, DataSource, ImageRecord, InteractiveDataset, read_coco, read_folder_pairs, read_sa1b
from .trainer import TrainConfig, Trainer, load_config, train

__all__ = [
    "AugmentConfig",
    "DataSource",
    "ImageRecord",
    "InteractiveDataset",
    "TrainConfig",
    "Trainer",
    "load_config",
    "read_coco",
    "read_folder_pairs",
    "read_sa1b",
    "train",
]
