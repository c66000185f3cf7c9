"""Checkpoints that hold only the trainable weights of an encoder with LoRA adapters.

With ``encoder.lora`` the base weights are frozen: a checkpoint that stored them would be the
size of the model for every save, and a resume would only read back what the base model already
holds. :func:`save_only_trainable` makes the module's ``state_dict`` (what Lightning writes into
each ``.ckpt``, the best and the last) leave out every frozen encoder weight and buffer, and its
``load_state_dict`` (a resume with ``ckpt_path``, ``export.checkpoint=best``) accept their
absence: the module was built from the base model, so they are already in place. The optimizer
gets the trainable parameters alone (:meth:`~dr.training.DenseRetrievalModule.configure_optimizers`),
so its state holds the adapters' moments alone. sentence-transformers' trainer, by contrast,
could not resume a PEFT run from its own checkpoints (its issue #3402).
"""

from __future__ import annotations

from torch import nn

from dr.models.lora import frozen_names


def save_only_trainable(module: nn.Module, attribute: str = "encoder") -> int:
    """Leave the frozen weights of ``module.<attribute>`` out of ``module.state_dict()`` and let
    ``module.load_state_dict`` go without them; returns how many entries are left out. ``module``
    is the top-level module that is saved and loaded (its state dict names start with ``attribute``)."""
    frozen = {f"{attribute}.{name}" for name in frozen_names(getattr(module, attribute))}

    def drop_frozen(_module, state: dict, prefix: str, _metadata) -> None:
        for name in frozen:
            state.pop(prefix + name, None)

    def allow_missing_frozen(_module, incompatible) -> None:
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k not in frozen]

    module.register_state_dict_post_hook(drop_frozen)
    module.register_load_state_dict_post_hook(allow_missing_frozen)
    return len(frozen)
