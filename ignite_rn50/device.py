"""The device seam: the only module that knows npu, cuda and cpu apart.

Everything device-specific (which device exists, which process-group backend it uses, the
autocast dtype, loss scaling, synchronisation, fused optimisers, apex) is decided here, so the
rest of the trainer only ever sees a ``torch.device`` and the objects built below.
torch_npu and apex are imported lazily: neither is needed unless asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterator

import torch

from ignite_rn50.errors import UserError

log = logging.getLogger(__name__)

BACKEND_FOR_DEVICE = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}
DEVICE_FOR_BACKEND = {"hccl": "npu", "nccl": "cuda"}


# --- discovery ------------------------------------------------------------------------------

def import_torch_npu() -> ModuleType:
    """Import torch_npu, turning every way it can fail into one clear UserError."""
    if importlib.util.find_spec("torch_npu") is None:
        raise UserError("--device npu needs torch_npu (Ascend's PyTorch adapter) with CANN; "
                        "install the torch_npu wheel matching your torch and source the CANN "
                        "set_env.sh, or pass --device cuda/cpu")
    try:
        # BaseException: old torch_npu versions call sys.exit() when CANN is missing.
        return importlib.import_module("torch_npu")
    except BaseException as exc:  # noqa: BLE001
        raise UserError(f"torch_npu is installed but failed to import ({type(exc).__name__}: "
                        f"{exc}); check that CANN is installed and its set_env.sh sourced, or "
                        "pass --device cuda/cpu") from None


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
    if device_type == "cpu":
        return os.cpu_count() or 1
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
        # The seed runs ops in eager (op-by-op) mode rather than jit-compiling each graph.
        torch.npu.set_compile_mode(jit_compile=False)
    _module(device_type).set_device(index)
    return torch.device(device_type, index)


def synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        _module(device.type).synchronize(device)


def current_device(device_type: str) -> torch.device:
    if device_type == "cpu":
        return torch.device("cpu")
    return torch.device(device_type, _module(device_type).current_device())


def configure_backends(device: torch.device, local_processes: int) -> None:
    """Per-device speed switches that do not change results beyond float rounding."""
    if device.type == "cpu" and local_processes > 1 and "OMP_NUM_THREADS" not in os.environ:
        # N processes x all cores each would oversubscribe the CPU many times over
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def free_memory(device: torch.device) -> int | None:
    """Free bytes on an accelerator (None on cpu, or when the device cannot tell)."""
    if device.type == "cpu":
        return None
    try:
        return int(_module(device.type).mem_get_info(device)[0])
    except (AttributeError, RuntimeError, TypeError):
        return None


def hide_gpus_from_cpu_ranks() -> None:
    """--device cpu with spawned ranks: ignite's native model selects a CUDA device whenever
    one is visible, which would move collectives to the GPU (or fail past the GPU count)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def pin_memory(device: torch.device) -> bool:
    return device.type in ("cuda", "npu")


# --- precision --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Precision:
    """What the train step does about mixed precision on this device."""

    enabled: bool
    dtype: torch.dtype | None
    backend: str  # "native" or "apex"

    @property
    def needs_scaler(self) -> bool:
        return self.enabled and self.backend == "native" and self.dtype == torch.float16

    def describe(self) -> str:
        if not self.enabled:
            return "fp32"
        if self.backend == "apex":
            return "apex"
        return str(self.dtype).replace("torch.", "")


def resolve_precision(device_type: str, amp: bool | None, amp_dtype: str,
                      amp_backend: str) -> Precision:
    enabled = (device_type != "cpu") if amp is None else amp
    if amp_backend == "apex":
        if device_type == "cpu":
            raise UserError("--amp-backend apex needs --device npu or cuda; use the native "
                            "backend on cpu")
        _import_apex()
        return Precision(True, None, "apex")
    if not enabled:
        return Precision(False, None, "native")
    if amp_dtype == "auto":
        dtype = torch.bfloat16 if device_type == "cpu" else torch.float16
    else:
        dtype = getattr(torch, amp_dtype)
    if device_type == "cpu":
        warnings.warn(f"--amp on cpu autocasts to {str(dtype).replace('torch.', '')}, which is "
                      "much slower than fp32 on most CPUs; drop --amp for speed", stacklevel=2)
    return Precision(True, dtype, "native")


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision) -> Iterator[None]:
    if precision.enabled and precision.backend == "native":
        with torch.autocast(device_type=device.type, dtype=precision.dtype):
            yield
    else:
        yield


def make_grad_scaler(device: torch.device, precision: Precision,
                     loss_scale: float | None) -> torch.amp.GradScaler | None:
    """Dynamic scaling by default; a static --loss-scale never grows (it still halves and skips
    the step on overflow, so one bad batch cannot poison the weights)."""
    if not precision.needs_scaler:
        return None
    if loss_scale is None:
        return torch.amp.GradScaler(device.type)
    return torch.amp.GradScaler(device.type, init_scale=loss_scale, growth_interval=2**31 - 1)


# --- optimiser and apex -----------------------------------------------------------------------

def _import_apex() -> ModuleType:
    if importlib.util.find_spec("apex") is None:
        raise UserError("--amp-backend apex needs apex (NVIDIA apex on cuda, Ascend's apex on "
                        "npu), which is not installed; install it or use --amp-backend native")
    try:
        return importlib.import_module("apex")
    except BaseException as exc:  # noqa: BLE001
        raise UserError(f"apex is installed but failed to import ({type(exc).__name__}: {exc}); "
                        "reinstall it for this torch, or use --amp-backend native") from None


def make_optimizer(params: Any, device: torch.device, precision: Precision, *, lr: float,
                   momentum: float, weight_decay: float, nesterov: bool) -> torch.optim.Optimizer:
    """Ascend's NpuFusedSGD under apex on npu (the seed's choice), else torch's SGD with the
    fastest implementation the device has (fused on cuda, foreach elsewhere)."""
    kwargs = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if device.type == "npu" and precision.backend == "apex":
        with contextlib.suppress(ImportError, AttributeError):
            from apex.optimizers import NpuFusedSGD  # type: ignore[import-not-found]
            return NpuFusedSGD(params, **kwargs)
    if device.type == "cuda":
        return torch.optim.SGD(params, fused=True, **kwargs)
    return torch.optim.SGD(params, foreach=device.type != "cpu", **kwargs)


def apex_initialize(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device, opt_level: str,
                    loss_scale: float | None) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    amp = _import_apex().amp
    kwargs: dict[str, Any] = dict(opt_level=opt_level,
                                  loss_scale="dynamic" if loss_scale is None else loss_scale)
    if device.type == "npu":
        kwargs["combine_grad"] = True  # Ascend apex only: fuses gradient buffers
    return amp.initialize(model, optimizer, **kwargs)


def apex_backward(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    amp = _import_apex().amp
    with amp.scale_loss(loss, optimizer) as scaled:
        scaled.backward()


def apex_state() -> Any:
    return _import_apex().amp
