"""Checkpoints written the way every other file of a run is: atomically, in place.

Lightning's ``TorchCheckpointIO`` writes local checkpoints through an fsspec transaction: the
bytes go to a temporary file in the system temp folder, which is then moved over the target,
a copy when the temp folder is on another file system (usual on clusters), without fsync. A
full disk or a kill during that copy leaves a truncated ``last.ckpt``, the one file a resumed run
needs. :class:`AtomicCheckpointIO` writes through :func:`dr.data.atomic_write` instead: a temporary
sibling in the checkpoint folder, fsynced, renamed over the target; a failed write leaves the
previous checkpoint as it was and raises an ``OSError`` naming the checkpoint.
``conf/trainer/default.yaml`` installs it (``plugins``). Remote paths (``s3://`` ...) keep
Lightning's writer.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning_fabric.utilities.cloud_io import get_filesystem
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from dr.data.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves go through :func:`dr.data.atomic_write`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        protocols = get_filesystem(path).protocol
        if storage_options is not None or "file" not in (protocols if isinstance(protocols, tuple) else (protocols,)):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_write(path, "wb") as f:
            torch.save(checkpoint, f)
