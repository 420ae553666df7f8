"""Build a validated config from a variant name or a YAML file plus ``key=value`` overrides.

A YAML file names its parent with ``__BASE__`` (a variant name or another YAML path,
relative to the including file) and lists only what differs, by section::

    __BASE__: yolact_plus_resnet50
    name: yolact_plus_resnet50_shapes
    data:
      class_names: [circle, square, triangle]
      max_size: 384
"""
import dataclasses
import os

import yaml

from src.config.schema import replace
from src.config.variants import VARIANTS


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names the source and key."""


def load_config(name_or_path, overrides=()):
    """Return the frozen config for a variant name or a YAML file, with overrides applied.

    Args:
        name_or_path: a key of ``VARIANTS`` or a path to a ``.yaml`` file.
        overrides: iterable of ``"section.field=value"`` strings; values are parsed as YAML
            (``train.lr_steps=[1000,2000]``, ``model.use_maskiou=false``).
    """
    config = _load(name_or_path, seen=())
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected section.field=value")
        key, text = item.split("=", 1)
        config = _apply(config, {key.strip(): yaml.safe_load(text)}, source="command line")
    return config


def _load(name_or_path, seen):
    if name_or_path in VARIANTS:
        return VARIANTS[name_or_path]
    if not name_or_path.endswith((".yaml", ".yml")):
        raise ConfigError(f"unknown config '{name_or_path}': expected one of "
                          f"{', '.join(sorted(VARIANTS))} or a .yaml file")
    path = os.path.abspath(name_or_path)
    if path in seen:
        raise ConfigError(f"{path}: __BASE__ chain loops back to this file")
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle) or {}
    except OSError as error:
        raise ConfigError(f"{name_or_path}: cannot read config file ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{name_or_path}: not valid YAML ({error})") from None
    if not isinstance(document, dict) or "__BASE__" not in document:
        raise ConfigError(f"{name_or_path}: expected a mapping with a __BASE__ key naming the parent")
    base = document.pop("__BASE__")
    if base not in VARIANTS:
        base = os.path.join(os.path.dirname(path), base)
    config = _load(base, seen + (path,))
    return _apply(config, _flatten(document), source=name_or_path)


def _flatten(document, prefix=""):
    """{"data": {"max_size": 3}} -> {"data.max_size": 3}; lists and scalars are leaves."""
    flat = {}
    for key, value in document.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _apply(config, changes, source):
    typed = {}
    for key, value in changes.items():
        current = _lookup(config, key, source)
        typed[key] = _coerce(current, value, key, source)
    return replace(config, **typed)


def _lookup(config, key, source):
    node = config
    for part in key.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            raise ConfigError(f"{source}: unknown config key '{key}'")
        node = getattr(node, part)
    if dataclasses.is_dataclass(node):
        raise ConfigError(f"{source}: '{key}' is a section; set its fields (e.g. '{key}.<field>')")
    return node


def _coerce(current, value, key, source):
    """Give ``value`` the type of the field's current value, or fail naming the key."""
    expected = type(current)
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' expects a list, got {value!r}")
        return tuple(_freeze(v) for v in value)
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' expects true/false, got {value!r}")
        return value
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string.
        try:
            return float(value)
        except ValueError:
            pass
    if expected is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if expected is str and isinstance(value, str):
        return value
    if expected is str and isinstance(value, bool):
        # YAML 1.1 reads yes/no/on/off as booleans; string fields spell them yes/no.
        return "yes" if value else "no"
    raise ConfigError(f"{source}: '{key}' expects {expected.__name__}, got {value!r}")


def _freeze(value):
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value
