"""Training objectives for dense retrievers: one loss per file, each citing its paper."""

from losses.combined import DistillationLoss
from losses.inbatch import InBatchKLLoss, InBatchMarginMSELoss, inbatch_margin_mse, listwise_kl
from losses.infonce import InfoNCELoss, info_nce
from losses.margin_mse import MarginMSELoss, margin_mse

__all__ = [
    "DistillationLoss",
    "InBatchKLLoss",
    "InBatchMarginMSELoss",
    "InfoNCELoss",
    "MarginMSELoss",
    "inbatch_margin_mse",
    "info_nce",
    "listwise_kl",
    "margin_mse",
]
