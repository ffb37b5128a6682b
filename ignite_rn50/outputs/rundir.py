"""The output folder: one run writes into it at a time, no run overwrites another's, and a
full disk is one line.

The process that owns the folder (the launcher of node 0, the one process of a single-process
run, or global rank 0 under torchrun/SLURM) takes an exclusive OS lock (``flock``) on
``.ignite_rn50.lock`` inside it before anything is written, and holds it until it exits.
The launcher's ranks hold it with it: they get the same open file description (not a new
open, which the exclusive lock would refuse) when they are spawned, and a flock lasts until
the last descriptor of its description is closed (``distributed.launch``'s ``hold``). A
launcher killed by SIGKILL thus leaves the folder claimed until its ranks, which stop and
save then, have left. The kernel drops the lock with the last process, so a run killed
whole (SIGKILL to all, an OOM, a power loss) never blocks the next one; the holder's pid,
host and start time written into the file are for the error message only.

On a shared file system the lock holds across hosts where the file system forwards locks
(NFSv4, NFSv3 with lockd; Linux maps flock to NFS byte-range locks); where it does not
(some FUSE and parallel file systems report ENOLCK or EOPNOTSUPP) the run goes on unlocked
with one warning.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ignite_rn50.errors import OutOfSpace, UserError

log = logging.getLogger("ignite_rn50")
LOCK_NAME = ".ignite_rn50.lock"
LOG_NAME = "train.log"
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class OutputDirLock:
    """An open file whose flock is this run's claim on the folder (kept until ``release``
    or the end of the process)."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd, self.path = fd, path
        self.found: frozenset[str] = frozenset()  # the folder's entries when it was claimed
        self.made: list[Path] = []  # the folders the claim created, innermost first

    def record_holder(self) -> None:
        """Who holds it, for the message a second run prints (once this run is sure to go)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                       "started": time.strftime("%Y-%m-%d %H:%M:%S")}
                                      ).encode() + b"\n", 0)

    def leave_as_found(self) -> None:
        """Bad input stopped the job before it wrote anything but its log: take away the
        lock and log it created, and the folders it made, so that nothing is left written.
        A folder where anything else has appeared (a config, a checkpoint) is kept whole."""
        folder = self.path.parent
        ours = {LOCK_NAME, LOG_NAME} - self.found
        now = {entry.name for entry in folder.iterdir()}
        if not now <= self.found | ours:
            return
        for name in ours & now:
            (folder / name).unlink(missing_ok=True)
        for made in self.made:
            try:
                made.rmdir()
            except OSError:  # not empty (something of someone else's): keep it and above
                return

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = -1


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        text = f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
    if info["host"] == socket.gethostname() and not Path(f"/proc/{info['pid']}").exists():
        text += "; that launcher is gone, its processes are still finishing"
    return text


def lock_output_dir(out: Path) -> OutputDirLock | None:
    """Take the folder's lock (writing nothing yet) or stop with one line naming the holder."""
    path = out / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"--output-dir {out} is not writable ({exc.strerror}); pass a writable "
                        "folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in UNSUPPORTED:
            log.warning("warning: the file system of %s does not support locks; nothing stops "
                        "a second run from writing into it at the same time", out)
            return None
        raise UserError(f"--output-dir {out} is in use by another run ({_holder(path)}); wait "
                        "for it to end or pass another --output-dir") from None
    return OutputDirLock(fd, path)


def claim_output_dir(output_dir: str, resuming: bool) -> OutputDirLock | None:
    """Create the folder, lock it, and refuse the checkpoints of another run unless resuming."""
    out = Path(output_dir).expanduser().resolve()
    made = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        found = frozenset(entry.name for entry in out.iterdir())
    except OSError as exc:
        raise UserError(f"--output-dir {out} is not writable ({exc.strerror}); pass a writable "
                        "folder") from None
    lock = lock_output_dir(out)
    if lock is not None:
        lock.found, lock.made = found, made
    if not resuming and any(out.glob("*.pt")):
        if lock is not None:
            lock.leave_as_found()
            lock.release()
        raise UserError(f"--output-dir {out} already holds checkpoints of another run; add "
                        "--resume auto to continue it, or pass a new --output-dir")
    if lock is not None:
        lock.record_holder()
    return lock


# --- a full disk --------------------------------------------------------------------------------

SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# torch.save reports a short write of its zip writer as RuntimeError, without the errno
TORCH_SHORT_WRITE = ("unexpected pos", "file write failed", "No space left")


def is_out_of_space(exc: BaseException, folder: Path, needed: int) -> bool:
    """ENOSPC/EDQUOT, or torch's short write while the folder has less room than needed."""
    if isinstance(exc, OSError) and exc.errno in SPACE_ERRNOS:
        return True
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in TORCH_SHORT_WRITE):
        return shutil.disk_usage(folder).free < needed
    return False


def tensor_bytes(obj: Any) -> int:
    """About what saving ``obj`` takes: the bytes of the tensors in it."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def out_of_space(folder: Path, name: str, needed: int, intact: str) -> OutOfSpace:
    free = shutil.disk_usage(folder).free
    return OutOfSpace(f"could not write {name}: {folder} is full (about {_size(needed)} "
                      f"needed, {_size(free)} free); {intact}. Free some space, then rerun "
                      "with --resume auto")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """A reader (or a kill) never sees half a file: write beside it, then rename. A full disk
    leaves the previous file as it was and is one line."""
    text = json.dumps(data, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if not is_out_of_space(exc, path.parent, len(text)):
            raise
        raise out_of_space(path.parent, path.name, len(text),
                                  f"{path.name} keeps its previous version") from None
