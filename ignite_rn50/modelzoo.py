"""The ModelZoo scripts' Python side (``test/common.sh`` stays a thin shell wrapper):

    python -m ignite_rn50.modelzoo resolve TRAINER_ARGS...
        three lines: global batch, processes, absolute output dir, as the trainer will resolve
        them from those arguments (before its value checks, so that a run refused for another
        value still has its CaseName); from the last value of each flag when they do not parse
    python -m ignite_rn50.modelzoo report SUMMARY_JSON STAMP LOG_DIR MODE
        the package's files for a finished run, every value from summary.json and
        train_loss.csv (not grepped from the log): ``<CaseName>.log``,
        ``train_<CaseName>_loss.txt`` and, for MODE full, ``train_<CaseName>_perf_report.log``

``report`` exits 1 with one ``error:`` line when the run wrote no summary since STAMP, completed
no epoch, or stopped before its last epoch; it then writes none of the files.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

NETWORK = "Resnet50_cifar_for_PyTorch"
LAST_VALUE_FLAGS = ("--batch-size", "--nproc", "--world-size", "--output-dir")


def case_name(batch: int, ranks: int) -> str:
    """The package's CaseName, "acc" for the performance scripts too."""
    return f"{NETWORK}_bs{batch}_{ranks}p_acc"


# --- resolve --------------------------------------------------------------------------------------

def resolve(args: list[str]) -> tuple[int | None, int | None, Path]:
    """(global batch, processes, output dir) of the trainer run these arguments make."""
    from ignite_rn50.config.declaration import default_of
    from ignite_rn50.config.parsing import build_parser, load_yaml

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            values = vars(build_parser().parse_args(args))
            if "config" in values:
                values = {**load_yaml(values.pop("config")), **values}
    except (Exception, SystemExit):  # noqa: BLE001 - the trainer will say what is wrong
        return _last_values(args)

    def get(name: str) -> Any:
        return values.get(name, default_of(name))

    return (get("batch_size"), get("nproc") * get("nodes"),
            Path(os.path.abspath(os.path.expanduser(get("output_dir")))))


def _last_values(args: list[str]) -> tuple[int | None, int | None, Path]:
    last: dict[str, str | None] = dict.fromkeys(LAST_VALUE_FLAGS)
    last["--world-size"] = "1"
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag in last:
            last[flag] = value if eq else (args[i + 1] if i + 1 < len(args) else None)

    def number(flag: str) -> int | None:
        try:
            return int(last[flag])  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None

    nproc, nodes = number("--nproc"), number("--world-size")
    out = Path(os.path.abspath(os.path.expanduser(str(last["--output-dir"]))))
    return number("--batch-size"), None if nproc is None or nodes is None else nproc * nodes, out


# --- report ---------------------------------------------------------------------------------------

class NoReport(Exception):
    """The run is not one to report (the message says why)."""


def _write(folder: Path, name: str, lines: list[str]) -> Path:
    path = folder / name
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    os.replace(tmp, path)
    return path


def read_finished_summary(summary_path: Path, stamp: Path) -> dict[str, Any]:
    run_dir = summary_path.parent
    if not summary_path.is_file() or summary_path.stat().st_mtime < stamp.stat().st_mtime:
        raise NoReport(f"the trainer exited 0 but wrote no summary.json for this run in "
                       f"{run_dir}; no CaseName log written")
    summary = json.loads(summary_path.read_text())
    if not summary.get("epochs_completed") or summary.get("best_top1") is None:
        raise NoReport(f"the run completed no epoch ({summary_path}); no CaseName log written")
    if summary["epochs_completed"] < summary.get("epochs", 0):
        raise NoReport(f"the run stopped after {summary['epochs_completed']} of "
                       f"{summary['epochs']} epochs (interrupted; resume it with --resume auto);"
                       " no CaseName log written")
    return summary


def case_values(s: dict[str, Any]) -> list[tuple[str, Any]]:
    """The CaseName log's ``key = value`` lines, in the package's order."""
    batch, ranks, fps = int(s["global_batch_size"]), int(s["world_size"]), s.get("fps")
    return [("Network", NETWORK), ("RankSize", ranks), ("BatchSize", batch),
            ("DeviceType", platform.machine()), ("CaseName", case_name(batch, ranks)),
            ("ActualFPS", f"{fps:.2f}" if fps else "n/a"),
            ("TrainingTime", f"{batch * 1000 / fps:.2f}" if fps else "n/a"),
            ("TrainAccuracy", f"{100 * s['best_top1']:.2f}"),
            ("ActualLoss", f"{s['final_loss']:.4f}" if s.get("final_loss") is not None
             else "n/a"),
            ("E2ETrainingTime", str(round(s["e2e_seconds"])))]


def perf_report(s: dict[str, Any]) -> list[str]:
    """The full runs' perf report: train_training_time (the epochs' training wall time,
    evaluation excluded), train_eval_time, total_time (end to end), training maximum
    images/sec (the best epoch's steady-state FPS), training average images/sec (images
    trained / training time), end to end average images/sec (images / total time)."""
    history = s["history"]
    train_time = sum(r.get("train_seconds", 0.0) for r in history)  # older runs lack it
    eval_time = sum(r["eval_seconds"] for r in history)
    images = s["iterations"] * int(s["global_batch_size"])
    rates = [r["fps"] for r in history if r.get("fps")]
    return [f"train_training_time : {train_time:.3f}", f"train_eval_time : {eval_time:.3f}",
            f"total_time : {s['e2e_seconds']:.3f}",
            f"training maximum images/sec : {max(rates):.2f}" if rates else
            "training maximum images/sec : n/a",
            f"training average images/sec : {images / train_time:.2f}" if train_time else
            "training average images/sec : n/a",
            f"end to end average images/sec : {images / s['e2e_seconds']:.2f}"]


def report(summary_path: Path, stamp: Path, log_dir: Path, mode: str) -> list[str]:
    """Write the package's files; returns the lines the script prints."""
    s = read_finished_summary(summary_path, stamp)
    values = dict(case_values(s))
    case = values["CaseName"]
    with open(summary_path.parent / "train_loss.csv") as fh:
        losses = [row["loss"] for row in csv.DictReader(fh)]
    _write(log_dir, f"train_{case}_loss.txt", losses)
    if mode == "full":
        _write(log_dir, f"train_{case}_perf_report.log", perf_report(s))
    path = _write(log_dir, f"{case}.log", [f"{k} = {v}" for k, v in case_values(s)])
    return [f"Final Performance images/sec : {values['ActualFPS']}",
            f"Final Train Accuracy : {values['TrainAccuracy']}",
            f"E2E Training Duration sec : {values['E2ETrainingTime']}", f"{case}: {path}"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["resolve"]:
        batch, processes, out = resolve(argv[1:])
        print("" if batch is None else batch)
        print("" if processes is None else processes)
        print(out)
        return 0
    if argv[:1] == ["report"] and len(argv) == 5:
        summary, stamp, log_dir, mode = argv[1:]
        try:
            lines = report(Path(summary), Path(stamp), Path(log_dir), mode)
        except NoReport as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 1
        print("\n".join(lines))
        return 0
    sys.stderr.write("usage: python -m ignite_rn50.modelzoo resolve TRAINER_ARGS... | "
                     "report SUMMARY_JSON STAMP LOG_DIR MODE\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
