"""Training: the Lightning data module and module, and ``train(cfg)``, the whole job as a function."""

from dr.training.checkpoint_io import AtomicCheckpointIO
from dr.training.datamodule import ContrastiveDataset, ResumableDataLoader, RetrievalDataModule
from dr.training.module import DenseRetrievalModule
from dr.training.pipeline import TestSplit, train

__all__ = [
    "AtomicCheckpointIO",
    "ContrastiveDataset",
    "DenseRetrievalModule",
    "ResumableDataLoader",
    "RetrievalDataModule",
    "TestSplit",
    "train",
]
