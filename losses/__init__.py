"""Training objectives for dense retrievers: one loss per file, each citing its paper."""

from losses.infonce import InfoNCELoss, info_nce
from losses.infonce_kd import InfoNCEKDLoss, candidate_kd
from losses.listwise_kl import InBatchKLLoss, listwise_kl
from losses.margin_mse import MarginMSELoss, margin_mse
from losses.tas_b import DistillationLoss, InBatchMarginMSELoss, inbatch_margin_mse

__all__ = [
    "DistillationLoss",
    "InBatchKLLoss",
    "InBatchMarginMSELoss",
    "InfoNCEKDLoss",
    "InfoNCELoss",
    "candidate_kd",
    "MarginMSELoss",
    "inbatch_margin_mse",
    "info_nce",
    "listwise_kl",
    "margin_mse",
]
