"""tools/plot_metrics.py: a metrics.jsonl with a resumed run's overlap and evaluations gives a
1200 x 800 PNG with four panels and the expected points per curve (the abandoned stretch
dropped); bad input is one line and exit 2; the tool never imports MindSpore."""
import json
import os
import struct
import subprocess
import sys

import pytest

from tests.conftest import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "plot_metrics.py")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Runs the tool as ``python tools/plot_metrics.py ...`` would, then says whether anything
# imported MindSpore.
RUN_AND_CHECK_IMPORTS = (
    "import runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "code = 0\n"
    "try:\n"
    "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "except SystemExit as stop:\n"
    "    code = stop.code\n"
    "print('mindspore imported:', 'mindspore' in sys.modules)\n"
    "sys.exit(code)\n")


def train_line(iteration, run):
    """A train record whose values tell the run (1 or 2) and the iteration apart."""
    losses = {"box": 1.0 + run, "class": 3.0 / iteration, "mask": 5.0, "semantic": 0.5,
              "maskiou": 0.1}
    return {"kind": "train", "iteration": iteration, "losses": losses,
            "total": sum(losses.values()), "lr": 1e-3 * min(1.0, iteration / 40),
            "loss_scale": 1024.0, "sec_per_step": 1.0 + 0.1 * run, "img_per_sec": 8.0,
            "time": 1733440000.0 + iteration}


def eval_line(iteration, box_ap, mask_ap):
    table = {"AP50": 0.8, "AP75": 0.6, "APs": 0.5, "APm": 0.5, "APl": -1.0}
    return {"kind": "eval", "iteration": iteration, "images": 20,
            "bbox": dict(table, AP=box_ap), "segm": dict(table, AP=mask_ap),
            "seconds": 12.3, "time": 1733440100.0 + iteration}


def resumed_run():
    """Run 1 logs 10..50 and evaluates at 20 and 40; it is resumed from its checkpoint at 30,
    so run 2 logs 40..80 and evaluates at 60 and 80 (box AP undefined there); run 2's start
    writes a line of another kind."""
    lines = [train_line(it, 1) for it in (10, 20)] + [eval_line(20, 0.10, 0.08)]
    lines += [train_line(it, 1) for it in (30, 40)] + [eval_line(40, 0.20, 0.15)]
    lines += [train_line(50, 1), {"kind": "note", "text": "resumed at 30"}]
    lines += [train_line(it, 2) for it in (40, 50, 60)] + [eval_line(60, 0.30, 0.25)]
    lines += [train_line(it, 2) for it in (70, 80)] + [eval_line(80, -1.0, 0.35)]
    return lines


def write_metrics(folder, records, tail=""):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.jsonl"), "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
        handle.write(tail)
    return str(folder)


def run_tool(*args):
    return subprocess.run([sys.executable, "-c", RUN_AND_CHECK_IMPORTS, TOOL, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def png_size(path):
    """(width, height) from the IHDR chunk, after checking the signature."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def panels(stdout):
    """{panel title: its report} from the tool's indented lines."""
    return dict(line.strip().split(": ", 1) for line in stdout.splitlines()
                if line.startswith("  "))


def test_resumed_run_is_drawn_with_the_later_lines(tmp_path):
    folder = write_metrics(tmp_path / "run", resumed_run())
    result = run_tool(folder)
    assert result.returncode == 0, result.stderr
    out = os.path.join(folder, "metrics.png")
    assert png_size(out) == (1200, 800)
    assert "mindspore imported: False" in result.stdout
    assert result.stdout.splitlines()[0] == (
        f"wrote {out}: 4 panels from 14 records of {folder}/metrics.jsonl "
        "(3 superseded by a resumed run, 1 skipped)")
    # 10..80 once each: run 1's 40 and 50 and its evaluation at 40 are dropped.
    assert panels(result.stdout) == {
        "Losses": "box 8, class 8, mask 8, semantic 8, maskiou 8, total 8",
        "Learning rate": "lr 8",
        "AP (%)": "box AP 2, mask AP 3",
        "Seconds per step": "s/step 8"}

    tool = load_tool("plot_metrics")
    records, skipped = tool.read_metrics(os.path.join(folder, "metrics.jsonl"))
    train, evals, superseded = tool.latest_run(records)
    assert (len(records), skipped, superseded) == (14, 1, 3)
    assert [(r["iteration"], r["losses"]["box"]) for r in train] == (
        [(it, 2.0) for it in (10, 20, 30)] + [(it, 3.0) for it in (40, 50, 60, 70, 80)])
    assert [r["iteration"] for r in evals] == [20, 60, 80]
    ap = dict(tool.panel_series(train, evals)[2][3])
    assert ap["box AP"] == ([20, 60], [pytest.approx(10.0), pytest.approx(30.0)])
    assert ap["mask AP"] == ([20, 60, 80], [pytest.approx(8.0), pytest.approx(25.0),
                                            pytest.approx(35.0)])


def test_run_without_evaluation_and_a_line_being_written(tmp_path):
    """--out elsewhere; no eval lines; the last line, cut short mid-write, is left out."""
    cut = json.dumps(train_line(40, 1))[:30]
    folder = write_metrics(tmp_path / "run", [train_line(it, 1) for it in (10, 20, 30)],
                           tail=cut)
    out = str(tmp_path / "elsewhere.png")
    result = run_tool(folder, "--out", out)
    assert result.returncode == 0, result.stderr
    assert png_size(out) == (1200, 800)
    assert not os.path.exists(os.path.join(folder, "metrics.png"))
    assert "(1 skipped)" in result.stdout.splitlines()[0]
    reports = panels(result.stdout)
    assert reports["Losses"].endswith("total 3") and reports["AP (%)"] == "no evaluation yet"


@pytest.mark.parametrize("case", ["no_folder", "no_file", "empty", "bad_json", "bad_field",
                                  "not_png"])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path):
    folder = str(tmp_path / "run")
    good = [json.dumps(train_line(10, 1)), json.dumps(eval_line(10, 0.1, 0.1))]
    args = []
    if case == "no_folder":
        expected = f"{folder}: no such folder"
    elif case == "no_file":
        os.makedirs(folder)
        expected = f"{folder}/metrics.jsonl: not found"
    elif case == "empty":
        write_metrics(folder, [], tail="\n")
        expected = f"{folder}/metrics.jsonl: no train or eval lines yet"
    elif case == "bad_json":
        write_metrics(folder, [], tail="\n".join(good + ["{'kind': 'train'}"] + good) + "\n")
        expected = f"{folder}/metrics.jsonl: line 3: not valid JSON"
    elif case == "bad_field":
        record = dict(train_line(20, 1), lr="0.001")
        write_metrics(folder, [train_line(10, 1), record])
        expected = f"{folder}/metrics.jsonl: line 2: 'lr' must be a number, got '0.001'"
    else:
        write_metrics(folder, [train_line(10, 1)])
        args = ["--out", str(tmp_path / "plot.jpg")]
        expected = f"--out {tmp_path / 'plot.jpg'}: expected a .png file name"
    result = run_tool(folder, *args)
    assert result.returncode == 2, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("plot_metrics: error: "), result.stderr
    assert expected in errors[0]
    assert not [name for name in os.listdir(tmp_path) if name.endswith((".png", ".jpg"))]
    assert not os.path.exists(os.path.join(folder, "metrics.png"))
