"""The device seam's precision half: mixed precision (native autocast and GradScaler, or
apex.amp) and the optimiser the package ran on each device (Ascend's NpuFusedSGD under apex,
torch's fused SGD on cuda). apex is imported lazily: it is needed only when asked for.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterator

import torch

from ignite_rn50.errors import UserError, import_optional

log = logging.getLogger(__name__)


# --- precision --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Precision:
    """What the train step does about mixed precision on this device."""

    enabled: bool
    dtype: torch.dtype | None
    backend: str  # "native" or "apex"
    loss_scale: float | None = None  # static scale; None = dynamic
    opt_level: str | None = None  # apex only

    @property
    def needs_scaler(self) -> bool:
        return self.enabled and self.backend == "native" and self.dtype == torch.float16

    def describe(self) -> str:
        if not self.enabled:
            return "fp32"
        if self.backend == "apex":
            return "apex"
        return str(self.dtype).replace("torch.", "")

    def explain(self) -> str:
        """One line for the log and summary.json: what really runs."""
        if not self.enabled:
            return "fp32 (no mixed precision)"
        scale = "dynamic loss scale" if self.loss_scale is None else \
            f"static loss scale {self.loss_scale:g}"
        if self.backend == "apex":
            return f"apex.amp {self.opt_level}, {scale}"
        if not self.needs_scaler:
            return f"native autocast {self.describe()}, no loss scaling"
        return f"native autocast {self.describe()}, {scale}"


def resolve_precision(device_type: str, amp: bool | None, amp_dtype: str, amp_backend: str,
                      loss_scale: float | None = None, opt_level: str = "O2") -> Precision:
    """``auto``: apex where it imports on an NPU (the ModelZoo package's apex O2), else native
    AMP."""
    enabled = (device_type != "cpu") if amp is None else amp
    if amp_backend == "auto":
        amp_backend = "apex" if device_type == "npu" and enabled and _apex_imports() \
            else "native"
    if amp_backend == "apex":
        if device_type == "cpu":
            raise UserError("--amp-backend apex needs --device npu or cuda; use the native "
                            "backend on cpu")
        _import_apex()
        return Precision(True, None, "apex", loss_scale, opt_level)
    if not enabled:
        return Precision(False, None, "native")
    if amp_dtype == "auto":
        dtype = torch.bfloat16 if device_type == "cpu" else torch.float16
    else:
        dtype = getattr(torch, amp_dtype)
    if device_type == "cpu":
        warnings.warn(f"--amp on cpu autocasts to {str(dtype).replace('torch.', '')}, which is "
                      "much slower than fp32 on most CPUs; drop --amp for speed", stacklevel=2)
    return Precision(True, dtype, "native", loss_scale)


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision, cache: bool = True) -> Iterator[None]:
    """``cache=False`` under graph capture: autocast's cache of cast weights would be freed
    at the end of the captured region while the graph still points at it."""
    if precision.enabled and precision.backend == "native":
        with torch.autocast(device_type=device.type, dtype=precision.dtype,
                            cache_enabled=cache):
            yield
    else:
        yield


def make_grad_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler | None:
    """Dynamic scaling by default. A static loss scale (``--loss-scale``) is apex's static
    scale: a step whose gradients overflow is skipped and the scale stays (see
    ``update_scaler``)."""
    if not precision.needs_scaler:
        return None
    if precision.loss_scale is None:
        return torch.amp.GradScaler(device.type)
    return torch.amp.GradScaler(device.type, init_scale=precision.loss_scale,
                                growth_interval=2**31 - 1)


def update_scaler(scaler: torch.amp.GradScaler, precision: Precision) -> None:
    """After ``scaler.step``: a dynamic scale grows or backs off; a static one is set back to
    its value (a device fill, no host sync), undoing GradScaler's backoff after an overflow."""
    scaler.update(precision.loss_scale)


@dataclass(frozen=True)
class Amp:
    """A train step's precision on its device: autocast, then backward and the optimizer step
    with loss scaling (GradScaler or apex.amp) when the precision has it."""

    device: torch.device
    precision: Precision
    scaler: torch.amp.GradScaler | None = None

    def autocast(self, cache: bool = True) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision, cache)

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.precision.backend == "apex":
            apex_backward(loss, optimizer)
            optimizer.step()
        elif self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)  # skipped when the scaled gradients overflowed
            update_scaler(self.scaler, self.precision)
        else:
            loss.backward()
            optimizer.step()

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                 last: bool = True) -> None:
        """One micro-batch's backward (--accum-steps): gradients add up until ``step``;
        apex unscales only after the last (its ``delay_unscale``)."""
        if self.precision.backend == "apex":
            apex_backward(loss, optimizer, delay_unscale=not last)
        elif self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self, optimizer: torch.optim.Optimizer,
             clip: float | None = None) -> torch.Tensor | None:
        """The optimiser step after ``backward``, the gradients first clipped to norm ``clip``
        (true gradients: unscaled by GradScaler, apex's fp32 master gradients under apex).
        Returns the norm before clipping as a device tensor (no host read), or None. An
        overflowing step of GradScaler is still skipped: its unscale_ records the overflow."""
        norm = None
        if self.precision.backend == "apex":
            if clip is not None:
                norm = _clip(_import_apex().amp.master_params(optimizer), clip)
            optimizer.step()
        elif self.scaler is not None:
            if clip is not None:
                self.scaler.unscale_(optimizer)
                norm = _clip(_params(optimizer), clip)
            self.scaler.step(optimizer)
            update_scaler(self.scaler, self.precision)
        else:
            if clip is not None:
                norm = _clip(_params(optimizer), clip)
            optimizer.step()
        return norm


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _clip(params: Any, max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_, foreach where the device has it: no host sync."""
    return torch.nn.utils.clip_grad_norm_(list(params), max_norm)


# --- optimiser and apex -----------------------------------------------------------------------

def _apex_imports() -> bool:
    try:
        _import_apex()
    except UserError:
        return False
    return True


def _import_apex() -> ModuleType:
    return import_optional("apex", "--amp-backend apex needs apex (NVIDIA apex on cuda, "
                           "Ascend's apex on npu), which is not installed; install it or use "
                           "--amp-backend native",
                           "reinstall it for this torch, or use --amp-backend native")


@dataclass(frozen=True)
class Sgd:
    """The optimiser's settings (the package's: SGD, no nesterov)."""

    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


def make_optimizer(params: Any, device: torch.device, precision: Precision,
                   sgd: Sgd) -> torch.optim.Optimizer:
    """Ascend's NpuFusedSGD under apex on npu (the package's choice), else torch's SGD with the
    fastest implementation the device has (fused on cuda, foreach elsewhere)."""
    kwargs = dict(lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay,
                  nesterov=sgd.nesterov)
    if device.type == "npu" and precision.backend == "apex":
        try:
            from apex.optimizers import NpuFusedSGD  # type: ignore[import-not-found]
        except (ImportError, AttributeError):
            log.warning("warning: this apex has no NpuFusedSGD (Ascend's apex has it); using "
                        "torch.optim.SGD, which the ModelZoo package did not")
        else:
            return NpuFusedSGD(params, **kwargs)
    if device.type == "cuda":
        return torch.optim.SGD(params, fused=True, **kwargs)
    return torch.optim.SGD(params, foreach=device.type != "cpu", **kwargs)


def apex_initialize(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device,
                    precision: Precision) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    amp = _import_apex().amp
    scale = precision.loss_scale
    kwargs: dict[str, Any] = dict(opt_level=precision.opt_level,
                                  loss_scale="dynamic" if scale is None else scale)
    if device.type == "npu":
        kwargs["combine_grad"] = True  # Ascend apex only: fuses gradient buffers
    return amp.initialize(model, optimizer, **kwargs)


def apex_backward(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                  delay_unscale: bool = False) -> None:
    amp = _import_apex().amp
    with amp.scale_loss(loss, optimizer, delay_unscale=delay_unscale) as scaled:
        scaled.backward()


def apex_state() -> Any:
    return _import_apex().amp
