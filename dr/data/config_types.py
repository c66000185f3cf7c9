"""The types of a command's top-level settings, read from its primary config file.

A command's ``conf/<name>.yaml`` gives every top-level key a default; the default's type is the
type a user's value must have (``k=abc`` where ``k: 1000`` is an error, not a crash an hour
later). Keys whose default is null take a path (a string) unless :data:`NULL_DEFAULT_TYPES`
says otherwise; a string setting may be empty only when its default is. Ranges and choices are
:data:`dr.validate.RULES`' business: this module checks types only.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from dr.config import ConfigError

#: Top-level keys whose default is null and whose value is not a path: the types they accept.
NULL_DEFAULT_TYPES: dict[str, tuple[str, ...]] = {
    "num_clusters": ("int",),
    "truncate_dim": ("int",),
    "interpolate": ("int", "number"),
    "rescore_multiplier": ("int", "number"),
    "max_negatives": ("int",),
    "output_num_negatives": ("int",),
    "measures": ("list",),
    "labels": ("list",),
    "names": ("list",),
    "beir": ("str", "list"),
    "run_files": ("str", "list"),
}

_EXPECTED = {
    "int": "an integer",
    "number": "a number",
    "bool": "true or false",
    "str": "a string (a path, a name)",
    "list": "a list, e.g. [a,b]",
    "dict": "a group of settings (set its keys: key.name=value)",
}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (ListConfig, list, tuple)):
        return "list"
    if isinstance(value, (DictConfig, dict)):
        return "dict"
    return type(value).__name__


def primary_defaults(config_dir: str | Path, config_name: str) -> dict[str, Any]:
    """``{key: default}`` of the top-level keys written in ``conf/<config_name>.yaml`` (not those
    its config groups add, nor interpolated ones)."""
    path = Path(config_dir) / f"{config_name}.yaml"
    if not path.is_file():
        return {}
    raw = OmegaConf.load(path)
    return {k: raw[k] for k in raw if k != "defaults" and not OmegaConf.is_interpolation(raw, k)}


def check_types(cfg: DictConfig, defaults: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` for the first top-level value whose type differs from its default's."""
    for key, default in defaults.items():
        if key not in cfg or OmegaConf.is_interpolation(cfg, key):
            continue
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if value is None:
            continue
        if default is None:
            accepted = NULL_DEFAULT_TYPES.get(key, ("str",))
        else:
            accepted = {"int": ("int",), "number": ("number", "int"), "list": ("list",), "dict": ("dict",)}.get(
                _kind(default), (_kind(default),)
            )
        kind = _kind(value)
        if kind not in accepted:
            expected = " or ".join(_EXPECTED.get(a, a) for a in accepted)
            raise ConfigError(f"{key}={_show(value)}: expected {expected}")
        if kind == "str" and not value.strip() and default != "":
            raise ConfigError(f"{key}='{value}': expected a non-empty value")


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        return str(OmegaConf.to_container(value, resolve=False))
    return str(value)
