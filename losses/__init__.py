"""Training objectives for dense retrievers: one loss per file, each citing its paper."""

from dr.losses.infonce import InfoNCELoss, info_nce
from dr.losses.infonce_kd import InfoNCEKDLoss, candidate_kd
from dr.losses.listwise_kl import InBatchKLLoss, listwise_kl
from dr.losses.margin_mse import MarginMSELoss, margin_mse
from dr.losses.matryoshka import MatryoshkaLoss
from dr.losses.tas_b import DistillationLoss, InBatchMarginMSELoss, inbatch_margin_mse

__all__ = [
    "DistillationLoss",
    "InBatchKLLoss",
    "InBatchMarginMSELoss",
    "InfoNCEKDLoss",
    "InfoNCELoss",
    "candidate_kd",
    "MarginMSELoss",
    "MatryoshkaLoss",
    "inbatch_margin_mse",
    "info_nce",
    "listwise_kl",
    "margin_mse",
]
