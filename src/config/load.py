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
import math
import os

import yaml

from src.box.priors import prototype_size
from src.config.schema import replace
from src.config.variants import VARIANTS

# Five stride-2 3x3 convs without padding reduce 63 px to 1 (63 -> 31 -> 15 -> 7 -> 3 -> 1).
MASKIOU_MIN_GRID = 63


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names the source and key."""


def load_config(name_or_path, overrides=(), flags=None):
    """Return the frozen config for a variant name or a YAML file, with overrides applied.

    Every value that comes from a file, an override or a flag is checked against the
    field's allowed values (``src.config.schema.setting``) as it is applied.

    Args:
        name_or_path: a key of ``VARIANTS`` or a path to a ``.yaml`` file.
        overrides: iterable of ``"section.field=value"`` strings; values are parsed as YAML
            (``train.lr_steps=[1000,2000]``, ``model.use_maskiou=false``).
        flags: {flag as typed, e.g. "--batch_size": (config key, value)}: command-line
            shorthands of config keys (``src.config.options``); a key set by a flag and by an
            override is an error.

    Raises:
        ConfigError: naming the file, override or flag and the key.
    """
    config = _load(name_or_path, seen=())
    changes = {}
    for item in overrides:
        key, value = _parse_override(item)
        changes[key] = value
    config = _apply(config, changes, source="--opts")
    for flag, (key, value) in (flags or {}).items():
        if key in changes:
            raise ConfigError(f"{flag} and --opts {key}=... set the same key; give one")
        config = _apply(config, {key: value}, source=flag)
    check_config(config)
    return config


def check_config(config):
    """Checks that involve several keys (one key's own limits are checked as it is set).

    Raises:
        ConfigError: naming the config and the keys.
    """
    where = f"config '{config.name}'"
    if config.loss.negative_iou > config.loss.positive_iou:
        raise ConfigError(f"{where}: loss.negative_iou {config.loss.negative_iou} is above "
                          f"loss.positive_iou {config.loss.positive_iou}")
    if len(config.model.backbone.layers) != 4 or len(config.model.backbone.dcn_layers) != 4:
        raise ConfigError(f"{where}: model.backbone.layers and model.backbone.dcn_layers need "
                          f"one value per stage (4)")
    if len({len(scales) for scales in config.model.pred_scales}) != 1:
        raise ConfigError(f"{where}: model.pred_scales needs the same number of scales on "
                          f"every level")
    grid = prototype_size(config.max_size)
    if config.model.use_maskiou and grid < MASKIOU_MIN_GRID:
        raise ConfigError(f"{where}: the mask re-scoring net (model.use_maskiou) needs a "
                          f"prototype grid of at least {MASKIOU_MIN_GRID} px, but data.max_size "
                          f"{config.max_size} gives {grid}; use data.max_size >= 249")


def _parse_override(item):
    if "=" not in item:
        raise ConfigError(f"--opts '{item}': expected section.field=value")
    key, text = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(text)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise ConfigError(f"--opts '{item}': the value is not valid YAML ({problem})") from None


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
        current, limits = _lookup(config, key, source)
        typed[key] = _coerce(current, value, key, source)
        problem = limit_violation(typed[key], limits)
        if problem:
            raise ConfigError(f"{source}: '{key}' {problem}, got {value!r}")
    return replace(config, **typed)


def _lookup(config, key, source):
    """(current value, the field's metadata) of a dotted key."""
    node, metadata = config, {}
    for part in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            raise ConfigError(f"{source}: unknown config key '{key}'")
        node, metadata = getattr(node, part), fields[part].metadata
    if dataclasses.is_dataclass(node):
        raise ConfigError(f"{source}: '{key}' is a section; set its fields (e.g. '{key}.<field>')")
    return node, metadata


def limit_violation(value, limits):
    """What is wrong with ``value`` under a field's ``setting`` limits, or "" when it fits.

    Numbers must be finite; a list's elements are checked one by one.
    """
    if isinstance(value, tuple):
        return next((problem for problem in (limit_violation(v, limits) for v in value)
                     if problem), "")
    choices = limits.get("choices")
    if choices is not None and value not in choices:
        return f"expects one of {', '.join(choices)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return ""
    if not math.isfinite(value):
        return "expects a finite number"
    bounds = (("minimum", ">=", lambda v, b: v >= b), ("maximum", "<=", lambda v, b: v <= b),
              ("above", ">", lambda v, b: v > b), ("below", "<", lambda v, b: v < b))
    for name, symbol, holds in bounds:
        bound = limits.get(name)
        if bound is not None and not holds(value, bound):
            return f"expects a value {symbol} {bound:g}"
    return ""


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


def config_to_yaml(config):
    """YAML text of every setting of ``config``: ``load_config`` of the file gives ``config``
    back, whatever variant or file it came from (the ``__BASE__`` it names is overridden in
    full)."""
    document = {"__BASE__": next(iter(VARIANTS)), **_plain(dataclasses.asdict(config))}
    header = (f"# Every setting of the run of '{config.name}', resolved; train.py --config "
              f"<this file> loads it.\n")
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=None)


def _plain(value):
    """Tuples (frozen lists) -> lists, recursively, for yaml.safe_dump."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
