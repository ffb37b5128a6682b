"""Process launch through ``idist.Parallel``, the HCCL computation model ignite lacks, DDP
wrapping and the few collectives the trainer runs outside DDP.

ignite 0.5's native model knows only nccl/gloo/mpi, returns cuda or cpu from ``device()``
and hard-codes ``_NativeDistModel`` inside its static spawn/worker functions. ``HcclDistModel``
subclasses it for Ascend: it accepts "hccl", selects ``npu:<local_rank>`` before
``init_process_group`` and reports that device. Registering it is done at import of this
module, which spawned children import too (they unpickle ``training.process.train``, whose
module imports this one).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing import reduction
from typing import Any

import ignite.distributed as idist
import ignite.distributed.utils as idist_utils
import torch
import torch.distributed as dist

# Imported here, before any process group exists: its collectives take ``group=group.WORLD``
# as a default argument, evaluated at import. Imported later (DDP's constructor imports
# torch._dynamo, which imports it) it holds the live group forever, so destroy_process_group
# cannot free it and gloo's worker threads run on into interpreter shutdown, where one that
# releases a finished collective's tensors must take the GIL, is ended by Python, and aborts
# the rank ("terminate called without an active exception", status -6).
import torch.distributed.nn.functional  # noqa: E402, F401  isort: skip
import torch.multiprocessing as mp  # noqa: E402
from ignite.distributed.comp_models.native import _NativeDistModel  # noqa: E402
from torch import nn  # noqa: E402

from ignite_rn50.errors import (  # noqa: E402
    Stop,
    UserError,
    install_sigterm,
    interruption_status,
    restore_sigterm,
)
from ignite_rn50.system import device as dev  # noqa: E402
from ignite_rn50.system.signals import SignalRelay  # noqa: E402


class HcclDistModel(_NativeDistModel):
    """ignite computation model for torch_npu's "hccl" process group."""

    name = "native-dist-hccl"
    available_backends = ("hccl",)
    device_type = "npu"

    @classmethod
    def _owns(cls, backend: str) -> bool:
        return backend in cls.available_backends

    @staticmethod
    def create_from_context() -> HcclDistModel | None:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        if not HcclDistModel._owns(dist.get_backend()):
            return None
        return HcclDistModel()

    @staticmethod
    def create_from_backend(backend: str, init_method: str | None = None,
                            world_size: int | None = None, rank: int | None = None,
                            **kwargs: Any) -> HcclDistModel:
        if not HcclDistModel._owns(backend):
            raise ValueError(f"Backend should be one of {HcclDistModel.available_backends}")
        if dist.is_available() and dist.is_initialized():
            raise RuntimeError("a default process group is already initialized")
        return HcclDistModel(backend=backend, init_method=init_method, world_size=world_size,
                             rank=rank, **kwargs)

    def _create_from_backend(self, backend: str, timeout: timedelta | None = None,
                             init_method: str | None = None, world_size: int | None = None,
                             rank: int | None = None, **kwargs: Any) -> None:
        self._backend = backend
        self.setup_env_vars(rank, world_size)
        # HCCL binds the communicator to the current device: select it first.
        dev.select_device(self.device_type, self._local_rank)
        pg_kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        self._init_method = init_method or "env://"
        if "env" not in self._init_method:
            pg_kwargs.update(world_size=int(os.environ["WORLD_SIZE"]),
                             rank=int(os.environ["RANK"]))
        dist.init_process_group(backend, init_method=self._init_method, **pg_kwargs)
        dist.barrier()
        self._setup_attrs()

    def _init_from_context(self) -> None:
        super()._init_from_context()
        dev.select_device(self.device_type, self._local_rank)

    def device(self) -> torch.device:
        return dev.current_device(self.device_type)

    # ignite's spawn/worker functions are static and name _NativeDistModel; these are the same
    # steps with this class in its place (ignite calls ``spawn`` with keyword arguments).
    @staticmethod
    def _dist_worker_task_fn(local_rank: int, task: WorkerTask) -> None:
        saved_env = os.environ.copy()
        os.environ.update(LOCAL_RANK=str(local_rank),
                          RANK=str(task.node_rank * task.nproc_per_node + local_rank),
                          WORLD_SIZE=str(task.nnodes * task.nproc_per_node),
                          MASTER_ADDR=str(task.master_addr), MASTER_PORT=str(task.master_port))
        model = HcclDistModel.create_from_backend(task.backend, init_method="env://",
                                                  **task.options)
        idist_utils._set_model(model)
        task.fn(local_rank, *task.args, **task.kwargs)
        idist.finalize()
        os.environ.clear()
        os.environ.update(saved_env)

    @staticmethod
    def spawn(fn: Callable, args: tuple, kwargs_dict: Mapping | None = None,
              **options: Any) -> None:
        """``options``: nproc_per_node, nnodes, node_rank, master_addr, master_port, backend,
        init_method (env:// only), and what the process group takes (timeout)."""
        spawn_kwargs = {k: options.pop(k) for k in ("join", "daemon", "start_method")
                        if k in options}
        spawn_kwargs.setdefault("start_method", "spawn")
        task = WorkerTask(fn=fn, args=tuple(args), kwargs=dict(kwargs_dict or {}),
                          backend=options.pop("backend", "hccl"),
                          nproc_per_node=options.pop("nproc_per_node", 1),
                          nnodes=options.pop("nnodes", 1), node_rank=options.pop("node_rank", 0),
                          master_addr=options.pop("master_addr", None) or "127.0.0.1",
                          master_port=options.pop("master_port", None) or 29500)
        if options.pop("init_method", None) not in (None, "env://"):
            raise ValueError("HcclDistModel.spawn supports init_method env:// only")
        task.options.update(options)
        mp.start_processes(HcclDistModel._dist_worker_task_fn, nprocs=task.nproc_per_node,
                           args=(task,), **spawn_kwargs)


@dataclass
class WorkerTask:
    """What every spawned rank of an HCCL job needs (pickled to each child)."""

    fn: Callable
    args: tuple
    kwargs: dict
    backend: str
    nproc_per_node: int
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    options: dict = field(default_factory=dict)


def register() -> None:
    """Put HcclDistModel first in ignite's registry (idempotent; also runs in children)."""
    models = idist_utils.registered_computation_models
    if HcclDistModel not in models:
        idist_utils.registered_computation_models = (HcclDistModel, *models)


register()


# --- launching ----------------------------------------------------------------------------------

def launched_externally() -> bool:
    """torchrun / torch.distributed.run and SLURM srun start the processes themselves."""
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return True
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def check_port_free(addr: str, port: int) -> None:
    """Node 0 hosts the rendezvous store: a busy port would fail deep inside c10d."""
    if addr not in ("127.0.0.1", "localhost", "0.0.0.0", socket.gethostname()):
        try:
            local = socket.gethostbyname(addr) in socket.gethostbyname_ex(socket.gethostname())[2]
        except OSError:
            local = False
        if not local:
            return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as c10d's store does: a port whose last connections are in TIME-WAIT is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            raise UserError(f"--port {port} is already in use on this host; pass a free port "
                            "with --port (and the same on every node)") from None


def wait_for_master(addr: str, port: int, timeout_s: float) -> None:
    """Nodes > 0: node 0 may start later, so wait for its port; fail clearly, not in c10d."""
    try:
        socket.getaddrinfo(addr, port)
    except OSError:
        raise UserError(f"--addr {addr} does not resolve; pass node 0's host name or IP") \
            from None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((addr, port), timeout=2):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise UserError(f"master {addr}:{port} unreachable for {timeout_s:.0f} s "
                                f"({exc.strerror or exc}); start node 0 first and check --addr, "
                                "--port and the firewall") from None
            time.sleep(1)


def _end_ranks(grace_s: float = 10) -> None:
    """After a second Ctrl-C: give the ranks ``grace_s`` to exit, then kill what is left."""
    deadline = time.monotonic() + grace_s
    for child in multiprocessing.active_children():
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join(5)


@dataclass(frozen=True)
class Topology:
    """Where the job's processes run: what ``launch`` needs of the configuration."""

    nproc: int
    nodes: int
    node_rank: int
    addr: str
    port: int
    timeout_s: int
    backend: str | None  # None: one process

    @property
    def processes(self) -> int:
        return self.nproc * self.nodes


class SharedFd:
    """An open file that spawned ranks share with their launcher: pickled while
    multiprocessing spawns a child (``reduction.DupFd``), the descriptor goes to the child
    with the spawn (the way fork would share it): the same open file description, not a new
    open of the same file. A flock belongs to the open file description and ends only when
    its last descriptor is closed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Callable, tuple]:
        return _shared_fd, (reduction.DupFd(self.fd),)


def _shared_fd(dup: Any) -> SharedFd:
    return SharedFd(dup.detach())


def _run_holding(local_rank: int, fn: Callable[[int, Any], None], held: SharedFd,
                 arg: Any) -> None:
    """A spawned rank that keeps ``held`` open until it exits (the kernel closes it then,
    after everything the rank wrote)."""
    fn(local_rank, arg)


def launch(fn: Callable[[int, Any], None], arg: Any, topology: Topology,
           hold: int | None = None) -> None:
    """``fn(local_rank, arg)`` in every process of the job: here alone for one process, in
    the group torchrun/SLURM made, or in ``--nproc`` spawned processes on this node.

    ``hold``: a descriptor whose flock claims the output folder (``outputs.rundir``). Spawned
    ranks hold it too, so the claim outlives a launcher killed by SIGKILL: its ranks (told by
    the kernel, see ``signals.LAUNCHER_GONE``) stop, save and leave, and only when the last of
    them has left can a new run take the folder."""
    timeout = timedelta(seconds=topology.timeout_s)
    if launched_externally():
        idist.initialize(topology.backend or "gloo", timeout=timeout)
        try:
            fn(idist.get_local_rank(), arg)
        finally:
            idist.finalize()
        return
    if topology.processes == 1:
        fn(0, arg)
        return
    if topology.node_rank > 0:
        wait_for_master(topology.addr, topology.port, topology.timeout_s)
    run = (fn,) if hold is None else (_run_holding, fn, SharedFd(hold))
    SignalRelay().install()
    try:
        with idist.Parallel(backend=topology.backend, nproc_per_node=topology.nproc,
                            nnodes=topology.nodes, node_rank=topology.node_rank,
                            master_addr=topology.addr, master_port=topology.port,
                            timeout=timeout) as parallel:
            parallel.run(*run, arg)
    except KeyboardInterrupt:
        _end_ranks()
        raise


def release_process_objects() -> None:
    """Free what still references the process group before it is destroyed: the engines'
    handlers and closures form reference cycles that hold DDP, and DDP holds the group. Only
    a group freed while the interpreter is alive joins its worker threads safely."""
    gc.collect()


def leave_group() -> None:
    """A rank that fails frees and destroys its group now: its exit then finds no gloo
    thread alive (see the import note at the top of this module)."""
    release_process_objects()
    if idist.get_world_size() > 1:
        idist.finalize()


# --- DDP and the collectives outside it ----------------------------------------------------------

def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP over the current group; on HCCL with ``broadcast_buffers=False`` (the package's
    setting: BN statistics are broadcast from rank 0 before each evaluation instead)."""
    kwargs: dict[str, Any] = {}
    if idist.backend() in HcclDistModel.available_backends:
        kwargs["broadcast_buffers"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch renames that keyword
        return nn.parallel.DistributedDataParallel(
            model, device_ids=None if device.index is None else [device.index], **kwargs)


@torch.no_grad()
def replica_report(model: nn.Module, device: torch.device) -> dict[str, Any]:
    """What each rank really ran on, and a weight checksum per replica (equal when DDP kept
    the replicas in step); two collectives at the end of a run."""
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    # float32 on the wire: HCCL's all_gather does not take float64 on every Ascend chip
    sums = idist.all_gather(checksum.reshape(1).float().to(idist.device()))
    devices = idist.all_gather(str(device))
    return {"backend": idist.backend(), "rank_devices": devices if isinstance(devices, list)
            else [devices], "replica_checksums": [float(v) for v in sums.cpu().tolist()]}


def any_rank(flag: bool) -> bool:
    """Whether any rank's ``flag`` is set (one tiny all-reduce; float32 on the wire, HCCL)."""
    value = torch.tensor([1.0 if flag else 0.0], device=idist.device())
    return bool(idist.all_reduce(value, op="MAX").item())


@torch.no_grad()
def sync_buffers(model: nn.Module) -> None:
    """BN running stats from rank 0 everywhere: HCCL runs DDP with broadcast_buffers=False,
    and evaluation shards must all use the statistics that the checkpoint will hold."""
    for buf in model.buffers():
        if buf.is_floating_point():
            buf.copy_(idist.broadcast(buf, src=0))


def rank_main(prog: str, body: Callable[[Any], None], job: Any) -> None:
    """Per-process entry of a job of several processes (spawned, torchrun or SLURM): a Stop
    ends this rank with its status and one line, Ctrl-C with 130, SIGTERM (where the body
    sets up no graceful stop of its own) with 143; the process group is freed on every
    path. A single process lets everything through to ``main``."""
    status = 0
    previous = install_sigterm()  # a spawned rank starts with SIGTERM's default: death
    try:
        body(job)
    except Stop as exc:
        if idist.get_world_size() == 1:
            raise
        status = exc.exit_status
        if not exc.logged:
            # one line per job: the same mistake usually stops every rank, and the launcher
            # ends the others as soon as one exits; a rank that failed alone still says why
            if idist.get_rank() != 0:
                time.sleep(2)
            sys.stderr.write(f"{prog}: error: {exc}\n")
    except KeyboardInterrupt as exc:
        if idist.get_world_size() == 1:
            raise
        # torch's spawn wrapper would report a Ctrl-C as success; the launcher says it
        status = interruption_status(exc)[1]
    finally:
        restore_sigterm(previous)
        release_process_objects()
    if status:
        leave_group()
        sys.exit(status)
