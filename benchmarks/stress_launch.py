"""Run the real multi-process CLI many times and count the runs that do not end cleanly.

Not part of the test suite (hundreds of runs take hours on 2 cores). Each run is the tiny
2-epoch job of ``tests/helpers.py::TINY`` with ``--nproc N`` (gloo on CPU, or "hccl" on the
NPU stand-in with ``--device npu``), in a fresh output folder on a fresh port. A run fails
when its exit status is not 0, when any rank printed ``terminate called`` (a C++
``std::terminate``), or when it did not write a complete ``summary.json``. Failures are
counted by cause; ``--keep DIR`` keeps each failed run's output and log there, and
``--core-dumps`` lets crashed ranks dump core into it for gdb.

    python benchmarks/stress_launch.py --runs 100 --nproc 2
    python benchmarks/stress_launch.py --runs 100 --nproc 4
    PYTHONPATH=../shared/npu-standin python benchmarks/stress_launch.py --runs 100 --device npu

Last line: ``failures=<k>/<N>``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--synthetic-image-size", "8", "--synthetic-train-size", "512",
        "--synthetic-test-size", "101", "--synthetic-classes", "10", "--depth", "18",
        "--batch-size", "32", "--epochs", "2", "--lr", "0.05", "--lr-milestones", "100",
        "--print-freq", "4", "--loggers", "--progress-bar", "off", "--num-workers", "0"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def classify(rc: int | None, output: str, out: Path) -> str | None:
    """None for a clean run, else a short cause."""
    if rc is None:
        return "timeout"
    if "terminate called" in output:
        return "std::terminate (terminate called ...)"
    if rc != 0:
        return f"exit status {rc}"
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return "no summary.json"
    if summary.get("epochs_completed") != summary.get("epochs"):
        return "incomplete summary.json"
    return None


def one_run(args: argparse.Namespace, work: Path, index: int) -> tuple[str | None, str, Path]:
    out = work / f"run{index}"
    cmd = [sys.executable, "-m", "ignite_rn50.run", *TINY, "--device", args.device,
           "--nproc", str(args.nproc), "--port", str(free_port()), "--output-dir", str(out),
           *args.extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(REPO)) if p)

    def allow_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    try:
        proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True,
                              timeout=args.timeout,
                              preexec_fn=allow_core if args.core_dumps else None)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = None
        output = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part or ""
                         for part in (exc.stdout, exc.stderr))
    return classify(rc, output, out), output, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "npu"))
    p.add_argument("--timeout", type=float, default=600, help="seconds per run")
    p.add_argument("--keep", type=Path, help="folder for the output and log of failed runs")
    p.add_argument("--core-dumps", action="store_true",
                   help="unlimited core size for the ranks (cores land in --keep)")
    p.add_argument("extra", nargs="*", help="more trainer flags, after --")
    args = p.parse_args()
    causes: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    for index in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="stress-") as tmp:
            t0 = time.monotonic()
            cause, output, out = one_run(args, Path(tmp), index)
            if cause:
                causes[cause] += 1
                if args.keep:
                    kept = args.keep / f"run{index}"
                    shutil.copytree(tmp, kept, dirs_exist_ok=True)
                    (kept / "output.txt").write_text(output)
            print(f"run {index}/{args.runs}: {cause or 'ok'} ({time.monotonic() - t0:.0f} s)",
                  flush=True)
    failures = sum(causes.values())
    print(f"--nproc {args.nproc} --device {args.device}: {args.runs} runs in "
          f"{(time.monotonic() - started) / 60:.1f} min")
    for cause, count in causes.most_common():
        print(f"  {count} x {cause}")
    print(f"failures={failures}/{args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
