"""Write (or check) the option tables of README.md and docs/options.md from the one option list.

    python tools/option_docs.py           # rewrite the tables in place
    python tools/option_docs.py --check   # exit 1 and name the stale tables (the tests run this)

A table sits between ``<!-- options: NAME -->`` and ``<!-- /options -->``: README.md holds
train.py's flags with their ``--help`` text; docs/options.md those of eval.py and export.py
and every config key (``src/config/schema.py``) with its default and help.
"""
import argparse
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from src.config.options import config_fields, describe, option_rows  # noqa: E402

SCRIPTS = ("train.py", "eval.py", "export.py")
README = os.path.join(REPO, "README.md")
KEYS_DOC = os.path.join(REPO, "docs", "options.md")
END = "<!-- /options -->"


def script_parser(script):
    """The argparse parser of an entry script (importing it runs no code of its own)."""
    import importlib

    module = importlib.import_module(os.path.splitext(script)[0])
    return module.build_parser()


def script_table(script):
    rows = ["| option | meaning |", "|---|---|"]
    rows += [f"| `{flags}` | {_cell(text)} |" for flags, text in option_rows(script_parser(script))]
    return "\n".join(rows)


def keys_table():
    rows = ["| key | meaning |", "|---|---|"]
    rows += [f"| `{key}` | {_cell(describe(item))} |" for key, item in config_fields()]
    return "\n".join(rows)


def _cell(text):
    return text.replace("|", "\\|")


def blocks():
    """{(path, marker name): generated table}."""
    tables = {(README if script == "train.py" else KEYS_DOC, script): script_table(script)
              for script in SCRIPTS}
    tables[(KEYS_DOC, "config keys")] = keys_table()
    return tables


def replace_block(text, name, table):
    """``text`` with the block of ``name`` replaced by ``table``, or None when the markers
    are missing."""
    pattern = re.compile(re.escape(f"<!-- options: {name} -->") + r"\n.*?" + re.escape(END),
                         re.DOTALL)
    if not pattern.search(text):
        return None
    return pattern.sub(lambda _: f"<!-- options: {name} -->\n{table}\n{END}", text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when a table differs from the options")
    args = parser.parse_args(argv)
    stale = []
    for (path, name), table in blocks().items():
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        updated = replace_block(text, name, table)
        if updated is None:
            print(f"{path}: no '<!-- options: {name} -->' ... '{END}' block", file=sys.stderr)
            return 1
        if updated != text:
            stale.append(f"{os.path.relpath(path, REPO)} ({name})")
            if not args.check:
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write(updated)
    if stale:
        verb = "stale" if args.check else "updated"
        print(f"{verb}: {', '.join(stale)}", file=sys.stderr if args.check else sys.stdout)
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
