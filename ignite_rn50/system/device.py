"""The device seam: with ``precision.py`` and ``distributed.py`` (the HCCL computation model
and DDP), the only code that tells npu, cuda and cpu apart.

Everything device-specific (which device exists, which process-group backend it uses, the
autocast dtype, loss scaling, synchronisation, fused optimisers, apex) is decided here, so the
rest of the trainer only ever sees a ``torch.device`` and the objects built below.
Mixed precision, apex and the optimiser are its other half, ``precision.py``.
torch_npu and apex are imported lazily: neither is needed unless asked for (and ``cli.py``
keeps torch >= 2.5 from autoloading torch_npu at ``import torch``, which must happen before
torch is imported, so before this module).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import ignite.distributed as idist
import torch

from ignite_rn50.errors import UserError, import_optional
from ignite_rn50.system.precision import Precision

log = logging.getLogger(__name__)

BACKEND_FOR_DEVICE = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}
DEVICE_FOR_BACKEND = {"hccl": "npu", "nccl": "cuda"}


# --- discovery ------------------------------------------------------------------------------

def import_torch_npu() -> ModuleType:
    """Import torch_npu, turning every way it can fail into one clear UserError."""
    return import_optional("torch_npu", "--device npu needs torch_npu (Ascend's PyTorch "
                           "adapter) with CANN; install the torch_npu wheel matching your torch "
                           "and source the CANN set_env.sh, or pass --device cuda/cpu",
                           "check that CANN is installed and its set_env.sh sourced, or pass "
                           "--device cuda/cpu")


def npu_available() -> bool:
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        import_torch_npu()
    except UserError:
        return False
    return hasattr(torch, "npu") and torch.npu.is_available() and torch.npu.device_count() > 0


def resolve_device_type(requested: str) -> str:
    """auto -> npu > cuda > cpu; an explicit device that is absent is a UserError."""
    if requested == "auto":
        if npu_available():
            return "npu"
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "npu":
        import_torch_npu()
        if not (torch.npu.is_available() and torch.npu.device_count() > 0):
            raise UserError("--device npu: torch_npu imported but sees no NPU; check "
                            "ASCEND_VISIBLE_DEVICES and the driver (npu-smi info)")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to torch (check nvidia-smi, "
                        "CUDA_VISIBLE_DEVICES and that torch is a CUDA build), or pass "
                        "--device cpu")
    return requested


def device_count(device_type: str) -> int:
    """Visible accelerators of this type (npu or cuda)."""
    return _module(device_type).device_count()


def _module(device_type: str) -> Any:
    """torch.cuda or torch.npu: the two accelerators share this API."""
    return getattr(torch, device_type)


def check_device_count(device_type: str, nproc: int, gpu_id: int | None) -> None:
    """More processes than cards, or a card index past the end, is a UserError."""
    if device_type == "cpu":
        return
    count = device_count(device_type)
    if nproc > count:
        raise UserError(f"--nproc {nproc} needs {nproc} {device_type} devices but only {count} "
                        f"are visible; lower --nproc to {count}")
    if gpu_id is not None and nproc == 1 and gpu_id >= count:
        raise UserError(f"--gpu-id {gpu_id} is out of range: {count} {device_type} device(s) "
                        f"visible (0..{count - 1})")


def backend_for(device_type: str, requested: str | None = None) -> str:
    backend = requested or BACKEND_FOR_DEVICE[device_type]
    needs = DEVICE_FOR_BACKEND.get(backend)
    if needs is not None and needs != device_type:
        raise UserError(f"--backend {backend} needs --device {needs}, not {device_type}; drop "
                        f"--backend to use {BACKEND_FOR_DEVICE[device_type]}")
    return backend


def select_device(device_type: str, index: int) -> torch.device:
    """Make ``index`` the current device of this process (before any collective)."""
    if device_type == "cpu":
        return torch.device("cpu")
    if device_type == "npu":
        import_torch_npu()
        # Ascend's recommended training mode: prebuilt binary kernels, not an online
        # compilation of each operator on first use.
        torch.npu.set_compile_mode(jit_compile=False)
    _module(device_type).set_device(index)
    return torch.device(device_type, index)


def process_device(device_type: str, gpu_id: int | None) -> torch.device:
    """This process's device: the one the process group selected for its rank, or
    ``--gpu-id`` (default 0) for a single process. gloo ranks all compute on the cpu."""
    if idist.get_world_size() > 1:
        return idist.device() if device_type != "cpu" else torch.device("cpu")
    return select_device(device_type, gpu_id if gpu_id is not None else 0)


def synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        _module(device.type).synchronize(device)


def current_device(device_type: str) -> torch.device:
    if device_type == "cpu":
        return torch.device("cpu")
    return torch.device(device_type, _module(device_type).current_device())


def configure_backends(device: torch.device, local_processes: int,
                       deterministic: bool = False) -> None:
    """Per-device speed switches that do not change results beyond float rounding; with
    ``deterministic`` (--deterministic) the reproducible choices instead."""
    if device.type == "cpu" and local_processes > 1 and "OMP_NUM_THREADS" not in os.environ:
        # N processes x all cores each would oversubscribe the CPU many times over
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if deterministic:
        deterministic_environment()
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        # warn_only: an op without a deterministic kernel warns instead of stopping the run
        torch.use_deterministic_algorithms(True, warn_only=True)


def deterministic_environment() -> None:
    """--deterministic's variables, set before any process group or library reads them (and
    inherited by spawned ranks): cuBLAS's fixed workspace, HCCL's fixed reduction order
    (CANN >= 8.0; on NPU torch_npu also follows use_deterministic_algorithms)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ.setdefault("HCCL_DETERMINISTIC", "true")


def free_memory(device: torch.device) -> int | None:
    """Free bytes on an accelerator (None on cpu, or when the device cannot tell)."""
    if device.type == "cpu":
        return None
    try:
        return int(_module(device.type).mem_get_info(device)[0])
    except (AttributeError, RuntimeError, TypeError):
        return None


def prepare_spawned_ranks(device_type: str) -> None:
    """--device cpu with spawned ranks: ignite's native model selects a CUDA device whenever
    one is visible, which would move collectives to the GPU (or fail past the GPU count)."""
    if device_type == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout of the model's weights and of every batch it sees (--channels-last)."""
    return torch.channels_last if channels_last else torch.contiguous_format


def pin_memory(device: torch.device) -> bool:
    return device.type in ("cuda", "npu")


def gpu_monitor_works(device: torch.device) -> bool:
    """ClearML's GPU monitor reads NVIDIA's NVML: useful on cuda, a failing probe elsewhere."""
    return device.type == "cuda"


# --- what this machine is (for the first lines of a run) --------------------------------------

def describe_device(device: torch.device) -> dict[str, str]:
    """Device name and count, plus the torch_npu and CANN versions on an NPU."""
    if device.type == "cpu":
        info = {"device": f"cpu ({platform.processor() or platform.machine()}, "
                          f"{os.cpu_count()} cores)", "device_count": "1"}
    else:
        mod = _module(device.type)
        info = {"device": f"{device} {mod.get_device_name(device)}",
                "device_count": str(mod.device_count())}
    if device.type == "npu":
        torch_npu = import_torch_npu()
        info["torch_npu"] = str(getattr(torch_npu, "__version__", "unknown"))
        info["cann"] = _cann_version(torch_npu)
    return info


def _cann_version(torch_npu: ModuleType) -> str:
    """torch_npu.utils.get_cann_version (CANN >= 8.1), else the toolkit's install record."""
    getter = getattr(getattr(torch_npu, "utils", None), "get_cann_version", None)
    with contextlib.suppress(Exception):
        version = getter() if getter is not None else ""
        if version:
            return str(version)
    home = os.environ.get("ASCEND_TOOLKIT_HOME") or os.environ.get("ASCEND_HOME_PATH")
    for info in Path(home).glob("*/ascend_toolkit_install.info") if home else ():
        for line in info.read_text(errors="ignore").splitlines():
            if line.startswith("version="):
                return line.split("=", 1)[1].strip()
    return "unknown"


# --- compilation and graph capture ------------------------------------------------------------

def compile_backend_available(device_type: str) -> ModuleType | None:
    """torchair on npu (inductor cannot generate NPU kernels); None: torch's own inductor."""
    if device_type != "npu":
        return None
    try:
        return importlib.import_module("torchair")
    except ImportError:
        raise UserError("--compile on npu needs torchair (Ascend's torch.compile backend), "
                        "which is not installed; install it or drop --compile") from None


def compile_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """torch.compile with the device's backend: inductor on cuda/cpu, torchair on npu."""
    torchair = compile_backend_available(device.type)
    if torchair is None:
        return torch.compile(model)
    return torch.compile(model, backend=torchair.get_npu_backend(), dynamic=False)


@dataclass(frozen=True)
class GraphApi:
    """The device's graph-capture API, in CUDA's shape (torch.npu mirrors it)."""

    graph: Callable[[], Any]          # torch.cuda.CUDAGraph
    capture: Callable[..., Any]       # torch.cuda.graph(g, pool=..., stream=...)
    stream: Callable[[], Any]         # torch.cuda.Stream
    use_stream: Callable[[Any], Any]  # torch.cuda.stream(s)
    current_stream: Callable[[], Any]


def graph_api(device: torch.device, precision: Precision | None = None) -> GraphApi:
    """--graph: CUDA graphs on cuda, torch_npu's NPUGraph where this torch_npu has one."""
    if device.type == "cpu":
        raise UserError("--graph captures the train step as a device graph, which needs "
                        "--device cuda or npu; drop --graph on cpu")
    mod = _module(device.type)
    names = {"cuda": "CUDAGraph", "npu": "NPUGraph"}
    graph_cls = getattr(mod, names[device.type], None)
    if graph_cls is None or not hasattr(mod, "graph"):
        raise UserError(f"--graph: this torch_npu has no graph capture (torch.npu."
                        f"{names[device.type]}); upgrade torch_npu or drop --graph")
    if device.type != "cuda" and precision is not None and precision.needs_scaler:
        # only cuda's fused SGD takes the scaler's overflow flag on the device; elsewhere
        # GradScaler.step reads it on the host, which a captured step cannot do
        raise UserError("--graph on npu captures fp32 or bfloat16 steps only (the fp16 loss "
                        "scaler reads its overflow flag on the host there); pass --no-amp or "
                        "--amp-dtype bfloat16, or drop --graph")
    return GraphApi(graph_cls, mod.graph, mod.Stream, mod.stream, mod.current_stream)


# --- SyncBatchNorm and the profiler -----------------------------------------------------------

def convert_sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """--sync-bn: torch's conversion (NCCL on cuda, HCCL on npu); on cpu (gloo) its layers
    become ``HostSyncBatchNorm``, since torch's SyncBatchNorm refuses host tensors."""
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if device.type == "cpu":
        for module in model.modules():
            if type(module) is torch.nn.SyncBatchNorm:
                module.__class__ = HostSyncBatchNorm
    return model


class HostSyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """SyncBatchNorm for host tensors. Ours because torch's raises for cpu input (its
    batch_norm_stats/gather kernels are GPU-only) and DDP refuses its class on cpu modules:
    the batch statistics of all ranks come from one autograd-aware all-reduce of per-channel
    sums (its backward all-reduces the gradients, as torch's SyncBatchNorm does); the
    running statistics update as BN's. Converted from torch's layers (``process_group``
    kept), so its state dict is theirs and BN's."""

    process_group: Any = None

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        c, dims = x.size(1), [0, *range(2, x.dim())]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]),
                                    self.process_group or dist.group.WORLD)
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else \
                    1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                self.running_var.mul_(1 - m).add_(var * n / (n - 1), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


class _AllReduceSum(torch.autograd.Function):
    """A sum over ranks whose gradient is the sum of the ranks' gradients (torch's
    ``torch.distributed.nn.functional.all_reduce``, deprecated in torch 2.14)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        import torch.distributed as dist

        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        import torch.distributed as dist

        out = grad.clone()
        dist.all_reduce(out, group=ctx.group)
        return out, None


def profiler(device: torch.device, folder: Path, worker: str) -> Any:
    """--profile-steps: torch.profiler (torch_npu.profiler on npu), its trace written into
    ``folder`` by the tensorboard_trace_handler (TensorBoard's profiler plugin and Perfetto
    read it). Returns the unstarted profile (``start``/``stop``)."""
    if device.type == "npu":
        prof = import_torch_npu().profiler
        activities = [prof.ProfilerActivity.CPU, prof.ProfilerActivity.NPU]
    else:
        prof = torch.profiler
        activities = [prof.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(prof.ProfilerActivity.CUDA)
    return prof.profile(activities=activities, record_shapes=True,
                        on_trace_ready=prof.tensorboard_trace_handler(str(folder),
                                                                      worker_name=worker))
