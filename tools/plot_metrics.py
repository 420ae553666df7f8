"""Draw a training run's ``metrics.jsonl``: the loss terms, the learning rate, box and mask AP
and the time per step against the iteration.

    python tools/plot_metrics.py output/yolact_plus_demo            # -> .../metrics.png
    python tools/plot_metrics.py output/yolact_plus_demo --out run.png

train.py appends one JSON object per line to ``<output_dir>/metrics.jsonl``: ``"kind":
"train"`` every log interval (``iteration``, ``losses`` {term: value}, ``total``, ``lr``,
``sec_per_step``, ...) and ``"kind": "eval"`` after each evaluation (``iteration``, ``bbox``
and ``segm`` {"AP": fraction, ...; -1 = undefined}). A resumed run appends too, so an
iteration can come again: the later run wins, and everything the earlier one logged from
that iteration on (its abandoned stretch, evaluations included) is dropped. Lines of other
kinds are skipped. The last line may be cut short while a run is writing it; it is then left
out. Any other unreadable line is an error naming its number.

Prints the panels drawn and the number of points per curve. Needs matplotlib only (no
MindSpore), so it runs anywhere the output folder is visible.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.train.run_record import LOSS_KEYS, METRICS_FILE  # noqa: E402  (no MindSpore import)
from src.utils.files import replaced_atomically  # noqa: E402

# 1200 x 800 px: four panels that stay readable side by side.
FIGURE_INCHES = (12.0, 8.0)
DPI = 100


class MetricsError(ValueError):
    """metrics.jsonl (or the output file) cannot be used; the message names it and, for a
    bad line, its number."""


def read_metrics(path):
    """The records of ``path`` in file order, checked.

    Returns:
        (records, skipped): records are the train / eval dicts, each with its line number
        under ``"line"``; skipped counts lines of other kinds and a cut-short last line.

    Raises:
        MetricsError: the file is missing or empty, or a line is not a valid record.
    """
    if not os.path.isfile(path):
        raise MetricsError(f"{path}: not found (train.py writes it into its output folder)")
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().split("\n")
    except OSError as error:
        raise MetricsError(f"{path}: cannot read ({error.strerror})") from None
    except UnicodeDecodeError:
        raise MetricsError(f"{path}: not UTF-8 text (expected JSON lines)") from None
    # The text after the last newline is a line still being written (or "" when none is).
    last_is_partial = lines[-1] != ""
    records, skipped = [], 0
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            if last_is_partial and number == len(lines):
                skipped += 1
                continue
            raise MetricsError(f"{path}: line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise MetricsError(f"{path}: line {number}: expected a JSON object")
        if record.get("kind") not in ("train", "eval"):
            skipped += 1
            continue
        problem = _check_record(record)
        if problem:
            raise MetricsError(f"{path}: line {number}: {problem}")
        records.append(dict(record, line=number))
    if not records:
        raise MetricsError(f"{path}: no train or eval lines yet")
    return records, skipped


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_record(record):
    """What is wrong with a train / eval record, or "" when nothing is."""
    iteration = record.get("iteration")
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        return f"'iteration' must be a non-negative integer, got {iteration!r}"
    if record["kind"] == "train":
        losses = record.get("losses")
        if not isinstance(losses, dict) or not all(map(_is_number, losses.values())):
            return f"'losses' must map loss terms to numbers, got {losses!r}"
        for key in ("total", "lr"):
            if not _is_number(record.get(key)):
                return f"'{key}' must be a number, got {record.get(key)!r}"
        if "sec_per_step" in record and not _is_number(record["sec_per_step"]):
            return f"'sec_per_step' must be a number, got {record['sec_per_step']!r}"
        return ""
    for key in ("bbox", "segm"):
        table = record.get(key)
        if not isinstance(table, dict) or not _is_number(table.get("AP")):
            return f"'{key}' must be an AP table with a number under 'AP', got {table!r}"
    return ""


def latest_run(records):
    """The records a plot shows: per kind, ascending iterations, where an iteration that comes
    again (a resumed run) drops what was logged from that iteration on.

    Returns:
        (train, evals, superseded): two lists of records and how many records were dropped.
    """
    train, evals = {}, {}
    superseded = 0
    for record in records:
        iteration = record["iteration"]
        series = train if record["kind"] == "train" else evals
        if series and iteration <= next(reversed(series)):
            # A train line going back restarts the evaluations from there too.
            for table in (train, evals) if series is train else (evals,):
                stale = [it for it in table if it >= iteration]
                superseded += len(stale)
                for it in stale:
                    del table[it]
        series[iteration] = record
    return list(train.values()), list(evals.values()), superseded


def _points(records, value):
    """(iterations, values) of ``value(record)``, leaving out undefined and non-finite ones."""
    pairs = [(record["iteration"], value(record)) for record in records]
    pairs = [(it, v) for it, v in pairs if v is not None and math.isfinite(v)]
    return [it for it, _ in pairs], [v for _, v in pairs]


def _ap_percent(key):
    def value(record):
        ap = record[key]["AP"]
        return None if ap < 0 else 100.0 * ap    # -1: COCOeval found nothing to measure
    return value


def panel_series(train, evals):
    """[(title, y label, log scale, {curve: (iterations, values)}, note when empty)] of the
    four panels."""
    terms = [term for term in LOSS_KEYS if any(term in r["losses"] for r in train)]
    terms += sorted({term for r in train for term in r["losses"]} - set(terms))
    losses = {term: _points([r for r in train if term in r["losses"]],
                            lambda r, t=term: r["losses"][t]) for term in terms}
    losses["total"] = _points(train, lambda r: r["total"])
    timed = [r for r in train if "sec_per_step" in r]
    return [
        ("Losses", "loss", True, losses, "no training lines yet"),
        ("Learning rate", "lr", True, {"lr": _points(train, lambda r: r["lr"])},
         "no training lines yet"),
        ("AP (%)", "AP %", False,
         {"box AP": _points(evals, _ap_percent("bbox")),
          "mask AP": _points(evals, _ap_percent("segm"))} if evals else {},
         "AP undefined (-1) in every evaluation" if evals else "no evaluation yet"),
        ("Seconds per step", "s / step", False,
         {"s/step": _points(timed, lambda r: r["sec_per_step"])} if timed else {},
         "no timing in the metrics"),
    ]


def draw(panels, out_path, title):
    """Draw ``panels`` (``panel_series``) on a 2 x 2 grid into the PNG ``out_path``, written
    to a temporary file first so that a viewer never reads half a picture.

    Returns:
        [(panel title, {curve: number of points}, the note drawn instead when it has none)].
    """
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    # One iteration axis for every panel, so that an evaluation lines up with its losses.
    iterations = [it for _, _, _, curves, _ in panels for xs, _ in curves.values() for it in xs]
    span = (min(iterations), max(iterations)) if iterations else (0, 0)
    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI)
    figure.suptitle(title)
    drawn = []
    for axes, (name, ylabel, log, curves, empty_note) in zip(figure.subplots(2, 2).flat, panels):
        axes.set_title(name)
        axes.set_xlabel("iteration")
        axes.set_ylabel(ylabel)
        plotted = {curve: xy for curve, xy in curves.items() if xy[0]}
        for curve, (iterations, values) in plotted.items():
            # The total stands out from its terms.
            style = {"color": "black", "linewidth": 2.0} if curve == "total" else {}
            axes.plot(iterations, values, label=curve, marker="." if len(values) < 30 else None,
                      **style)
        if plotted:
            if span[0] < span[1]:
                axes.set_xlim(*span)
            if log and any(v > 0 for _, values in plotted.values() for v in values):
                # A zero term (no positives in a batch) leaves a gap instead of a plunge.
                axes.set_yscale("log", nonpositive="mask")
            if len(plotted) > 1:
                axes.legend(fontsize="small")
            axes.grid(True, alpha=0.3)
        else:
            axes.text(0.5, 0.5, empty_note, ha="center", va="center", transform=axes.transAxes)
        drawn.append((name, {curve: len(xy[0]) for curve, xy in curves.items()},
                      "" if plotted else empty_note))
    figure.tight_layout()
    with replaced_atomically(out_path, ".png") as temporary:
        figure.savefig(temporary, format="png")
    return drawn


def plot_metrics(output_dir, out_path=None):
    """Read ``<output_dir>/metrics.jsonl`` and draw it into ``out_path`` (default
    ``<output_dir>/metrics.png``).

    Returns:
        the report lines: the file written, then per panel its title and points per curve.

    Raises:
        MetricsError: the folder, the file or a line is unusable, or the picture cannot be
            written.
    """
    if not os.path.isdir(output_dir):
        raise MetricsError(f"{output_dir}: no such folder (expected a train.py output folder)")
    out_path = out_path or os.path.join(output_dir, "metrics.png")
    if not out_path.lower().endswith(".png"):
        raise MetricsError(f"--out {out_path}: expected a .png file name")
    path = os.path.join(output_dir, METRICS_FILE)
    records, skipped = read_metrics(path)
    train, evals, superseded = latest_run(records)
    title = os.path.basename(os.path.normpath(os.path.abspath(output_dir)))
    try:
        drawn = draw(panel_series(train, evals), out_path, title)
    except OSError as error:
        raise MetricsError(f"{out_path}: cannot write the picture ({error.strerror})") from None
    notes = [f"{superseded} superseded by a resumed run"] if superseded else []
    notes += [f"{skipped} skipped"] if skipped else []
    lines = [f"wrote {out_path}: {len(drawn)} panels from {len(records)} records of {path}"
             + (f" ({', '.join(notes)})" if notes else "")]
    for name, counts, note in drawn:
        shown = ", ".join(f"{curve} {count}" for curve, count in counts.items())
        lines.append(f"  {name}: {note or shown}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_dir", help="a train.py output folder holding metrics.jsonl")
    parser.add_argument("--out", default=None,
                        help="PNG to write (default: OUTPUT_DIR/metrics.png)")
    args = parser.parse_args(argv)
    try:
        lines = plot_metrics(args.output_dir, args.out)
    except MetricsError as error:
        print(f"plot_metrics: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
