"""Command-line options generated from the config schema, so that the schema stays the one
list of settings.

An entry script declares which config keys it offers as flags (``--batch_size`` for
``train.batch_size``); a flag is only a shorthand that writes its key, exactly as ``--opts
train.batch_size=16`` or a YAML file would. Its help, type and choices come from the field
(``src.config.schema.setting``), and ``--help`` lists every other key of the script's
sections after the flags, each once. ``option_rows`` gives the same text to the README's
tables (``tools/option_docs.py``), so the two cannot drift apart.
"""
import argparse
import dataclasses

from src.config.schema import YolactConfig

CONFIG_HELP = "variant name (src/config/variants.py) or a YAML file with __BASE__"
OPTS_HELP = "other config keys, e.g. train.lr=0.002 (values are YAML)"


def config_fields(cls=YolactConfig, prefix=""):
    """Yield (dotted key, dataclasses.Field) for every leaf setting of ``cls``, in
    declaration order, sections expanded."""
    for item in dataclasses.fields(cls):
        key = prefix + item.name
        if dataclasses.is_dataclass(item.type):
            yield from config_fields(item.type, key + ".")
        elif item.name != "name":
            yield key, item


def _field(key):
    fields = dict(config_fields())
    if key not in fields:
        raise KeyError(f"no config key {key}")
    return fields[key]


def describe(item):
    """The help text of a field with its allowed values and schema default."""
    metadata = item.metadata
    parts = [metadata["help"]]
    if metadata.get("choices"):
        parts.append(f"one of {', '.join(metadata['choices'])}")
    default = item.default
    if default == "":
        return "; ".join(parts)
    return "; ".join(parts) + f" (default {list(default) if isinstance(default, tuple) else default})"


class ConfigOptions:
    """The config flags of one entry script.

    Args:
        flags: {flag name without dashes: config key}, e.g. {"batch_size": "train.batch_size"}.
        sections: config sections listed in ``--help`` under "other config keys".
    """

    def __init__(self, flags, sections):
        self.flags = dict(flags)
        self.sections = tuple(sections)
        for key in self.flags.values():
            _field(key)

    def add_to(self, parser):
        """Add ``--config``, ``--opts`` and the flags to ``parser`` and list the other keys
        of the sections in its epilog."""
        parser.add_argument("--config", default="yolact_plus_resnet50", help=CONFIG_HELP)
        parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help=OPTS_HELP)
        group = parser.add_argument_group("config keys as flags (each writes the key named)")
        for flag, key in self.flags.items():
            item = _field(key)
            # A boolean flag alone means true ("--overwrite"), or takes true/false.
            boolean = {"nargs": "?", "const": True} if isinstance(item.default, bool) else {}
            group.add_argument(f"--{flag}", dest=f"config_flag_{flag}", default=None,
                               type=_flag_type(item.default), metavar=_metavar(item),
                               help=f"{key}: {describe(item)}", **boolean)
        parser.epilog = "other config keys (--opts KEY=VALUE):\n" + "\n".join(
            f"  {key}: {text}" for key, text in self.other_keys())
        parser.formatter_class = argparse.RawDescriptionHelpFormatter

    def other_keys(self):
        """(key, help) of the sections' keys that have no flag."""
        flagged = set(self.flags.values())
        return [(key, describe(item)) for key, item in config_fields()
                if key.split(".")[0] in self.sections and key not in flagged]

    def given(self, args):
        """{"--flag": (key, value)} of the flags given on the command line, for
        ``load_config(..., flags=...)``."""
        values = {}
        for flag, key in self.flags.items():
            value = getattr(args, f"config_flag_{flag}")
            if value is not None:
                values[f"--{flag}"] = (key, value)
        return values


def _flag_type(default):
    if isinstance(default, bool):
        return _parse_bool
    if isinstance(default, (int, float, str)):
        return type(default)
    raise TypeError(f"a flag cannot take a list setting (default {default!r}); use --opts")


def _parse_bool(text):
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _metavar(item):
    if isinstance(item.default, bool):
        return "true|false"
    if item.metadata.get("choices"):
        return "{" + ",".join(item.metadata["choices"]) + "}"
    return type(item.default).__name__.upper()


def option_rows(parser):
    """(flags, help) of every option of an argparse ``parser`` but ``--help``: the rows of
    the README's option table of a script."""
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flags = ", ".join(action.option_strings) or action.dest
        rows.append((flags, " ".join((action.help or "").split())))
    return rows
