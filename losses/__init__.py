"""Training objectives for dense retrievers: one loss per file, each citing its paper."""

from losses.infonce import InfoNCELoss, info_nce

__all__ = ["InfoNCELoss", "info_nce"]
