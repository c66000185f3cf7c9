"""Models: the dual encoder (:class:`BiEncoder`), loaded from a hub name, a folder or a ``.ckpt``."""

from dr.models.encoder import DR_CONFIG, BiEncoder, autocast_context, pool, resolve_model_name

__all__ = ["DR_CONFIG", "BiEncoder", "autocast_context", "pool", "resolve_model_name"]
