"""ONNX for deployment: the graph to export (optionally with the dataset's pre-processing and
a softmax), the export itself, onnxruntime's check of the file, and Ascend ATC's AIPP config.

AIPP (Ascend's on-chip pre-processing) computes, per channel,
``out = (in - mean_chn - min_chn) * var_reci_chn`` on uint8 RGB input; with ``mean_chn`` the
mean's integer part, ``min_chn`` its fraction and ``var_reci_chn = 1 / std`` (0-255 scale) it
is the trainer's normalisation. ``aipp_apply`` is that formula in numpy, so the config's
arithmetic is checked here, where ATC cannot run.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ignite_rn50.errors import UserError

INSTALL = "pip install -r requirements-export.txt"
DYNAMO_FROM = 18  # the TorchScript exporter below, the dynamo exporter from here


class ExportModel(nn.Module):
    """The network as deployed: optional uint8 -> normalised float in front (the trainer's
    arithmetic: x / 255, minus mean, over std, on 0-1 values), optional softmax behind."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 preprocess: bool, softmax: bool) -> None:
        super().__init__()
        self.model, self.preprocess, self.softmax = model, preprocess, softmax
        self.register_buffer("mean", torch.tensor([m / 255 for m in mean]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([s / 255 for s in std]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preprocess:
            x = (x.to(torch.float32) / 255 - self.mean) / self.std
        out = self.model(x)
        return torch.softmax(out, dim=1) if self.softmax else out


def require_packages(opset: int) -> None:
    """onnx and onnxruntime always; onnxscript for the dynamo exporter."""
    needed = ["onnx", "onnxruntime"] + (["onnxscript"] if opset >= DYNAMO_FROM else [])
    for name in needed:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(f"export needs {name}, which is not installed: {INSTALL}") \
                from None


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The TorchScript exporter's deprecation notice, tracer warnings and the dynamo
    exporter's progress lines are ours to judge, not the user's to read (the check that
    follows says whether the file is right)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), open(os.devnull, "w") as sink, \
            contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


@dataclass(frozen=True)
class GraphSpec:
    opset: int
    batch: int | None  # None: dynamic
    input_name: str
    output_name: str
    uint8_input: bool
    image_size: int


def example_input(spec: GraphSpec) -> torch.Tensor:
    shape = (spec.batch or 2, 3, spec.image_size, spec.image_size)
    if spec.uint8_input:
        return torch.randint(0, 256, shape, dtype=torch.uint8)
    return torch.randn(shape)


def export(module: ExportModel, spec: GraphSpec, path: Path) -> None:
    """Write ``path``; a refusal of the exporter (an opset it cannot write) is a UserError."""
    module.eval()
    dynamic = None if spec.batch else {spec.input_name: {0: "batch"},
                                       spec.output_name: {0: "batch"}}
    dynamo = spec.opset >= DYNAMO_FROM
    try:
        with quiet_exporter(), torch.no_grad():
            torch.onnx.export(module, (example_input(spec),), str(path),
                              input_names=[spec.input_name], output_names=[spec.output_name],
                              opset_version=spec.opset, dynamic_axes=dynamic, dynamo=dynamo,
                              do_constant_folding=True, **({"verbose": False} if dynamo
                                                           else {}))
    except Exception as exc:  # noqa: BLE001 - any refusal of the exporter means the same
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"--opset {spec.opset}: the exporter refused it ({first}); pass "
                        "--opset 11 (ATC) or another one it writes (9-17, 18+ with "
                        "onnxscript)") from None
    finally:
        inline_external_data(path)


def inline_external_data(path: Path) -> None:
    """One self-contained file: the dynamo exporter (and onnx's version converter) may put
    the weights beside it as ``<file>.data``, which a rename would orphan."""
    data = path.with_name(path.name + ".data")
    if not data.exists():
        return
    import onnx

    try:
        if path.exists():
            onnx.save(onnx.load(str(path)), str(path), save_as_external_data=False)
    finally:
        data.unlink(missing_ok=True)


class OnnxModel:
    """An exported file in onnxruntime, on the CPU."""

    def __init__(self, path: Path) -> None:
        import onnx
        import onnxruntime

        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        self.opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        self.session = onnxruntime.InferenceSession(str(path),
                                                    providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


@dataclass(frozen=True)
class Agreement:
    max_abs_diff: float  # over the finite outputs; nan when a side was not finite
    top1_agree: int
    images: int
    nonfinite: str | None = None  # "PyTorch", "onnxruntime" or both: whose logits were not
    shape_mismatch: str | None = None

    def problem(self, tolerance: float) -> str | None:
        """Why the file must not be kept, or None. Nothing passes vacuously: no image
        compared, a NaN or inf on either side, or other shapes fail, and the difference must
        be at most ``tolerance`` (a NaN is not)."""
        if self.images == 0:
            return "the check compared no image"
        if self.shape_mismatch:
            return f"the outputs have other shapes ({self.shape_mismatch})"
        if self.nonfinite:
            return f"the {self.nonfinite} outputs hold NaN/inf"
        if not self.max_abs_diff <= tolerance or self.top1_agree < self.images:
            return (f"max abs difference {self.max_abs_diff:.3g}, top-1 agrees on "
                    f"{self.top1_agree}/{self.images}")
        return None


def compare(module: ExportModel, onnx_model: OnnxModel, batches: list[torch.Tensor]
            ) -> Agreement:
    """The same inputs through PyTorch and onnxruntime."""
    diffs, agree, images, nonfinite = [], 0, 0, set()
    with torch.no_grad():
        for x in batches:
            ours = module(x).numpy()
            theirs = onnx_model(x.numpy())
            images += len(x)
            if ours.shape != theirs.shape:
                return Agreement(math.nan, 0, images, shape_mismatch=f"PyTorch {ours.shape}, "
                                 f"onnxruntime {theirs.shape}")
            nonfinite |= {side for side, out in (("PyTorch", ours), ("onnxruntime", theirs))
                          if not np.isfinite(out).all()}
            if ours.size:
                diffs.append(float(np.abs(ours - theirs).max()))
            agree += int((ours.argmax(1) == theirs.argmax(1)).sum()) if ours.size else 0
    worst = math.nan if nonfinite or not diffs else max(diffs)
    return Agreement(worst, agree, images,
                     " and ".join(sorted(nonfinite)) or None)


def accuracy(onnx_model: OnnxModel, inputs: torch.Tensor, labels: torch.Tensor,
             batch: int | None) -> tuple[float, float, int]:
    """(top-1 %, top-5 %, images) of the exported model over a split, as evaluate counts
    them; a static batch runs padded chunks (the padding's outputs are dropped)."""
    size = batch or 64
    top1 = top5 = 0
    for start in range(0, len(labels), size):
        x, y = inputs[start:start + size], labels[start:start + size].numpy()
        n = len(y)
        if batch and n < batch:
            x = torch.cat([x, x.new_zeros((batch - n, *x.shape[1:]))])
        out = onnx_model(x.numpy())[:n]
        ranked = np.argsort(-out, axis=1, kind="stable")
        top1 += int((ranked[:, 0] == y).sum())
        top5 += int((ranked[:, :5] == y[:, None]).any(1).sum())
    return 100 * top1 / len(labels), 100 * top5 / len(labels), len(labels)


# --- Ascend ATC's AIPP -------------------------------------------------------------------------

def aipp_channels(mean: tuple[float, ...], std: tuple[float, ...]) -> list[tuple[int, float,
                                                                                  float]]:
    """(mean_chn, min_chn, var_reci_chn) per channel: the integer and fractional parts of the
    mean, and 1/std, on 0-255 values."""
    return [(int(math.floor(m)), m - math.floor(m), 1.0 / s) for m, s in zip(mean, std,
                                                                              strict=True)]


def aipp_config(mean: tuple[float, ...], std: tuple[float, ...], image_size: int) -> str:
    lines = ["aipp_op {", "    aipp_mode : static", "    input_format : RGB888_U8",
             f"    src_image_size_w : {image_size}", f"    src_image_size_h : {image_size}",
             "    csc_switch : false", "    rbuv_swap_switch : false"]
    for i, (mean_chn, min_chn, var_reci) in enumerate(aipp_channels(mean, std)):
        lines += [f"    mean_chn_{i} : {mean_chn}", f"    min_chn_{i} : {min_chn:.6f}",
                  f"    var_reci_chn_{i} : {var_reci:.9f}"]
    return "\n".join([*lines, "}"]) + "\n"


def aipp_apply(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]
               ) -> np.ndarray:
    """AIPP's normalisation of uint8 NCHW images, with the config's own (rounded) numbers."""
    out = images.astype(np.float32)
    for i, (mean_chn, min_chn, var_reci) in enumerate(aipp_channels(mean, std)):
        min_rounded, reci_rounded = float(f"{min_chn:.6f}"), float(f"{var_reci:.9f}")
        out[:, i] = (out[:, i] - mean_chn - min_rounded) * reci_rounded
    return out


def atc_command(onnx_path: Path, aipp_path: Path, spec: GraphSpec,
                soc: str = "Ascend310P3") -> str:
    shape = f"{spec.input_name}:{spec.batch or -1},3,{spec.image_size},{spec.image_size}"
    dynamic = "" if spec.batch else ' --dynamic_batch_size="1,4,8,16,32,64"'
    return (f'atc --model={onnx_path} --framework=5 --output={onnx_path.with_suffix("")} '
            f'--input_format=NCHW --input_shape="{shape}"{dynamic} '
            f'--insert_op_conf={aipp_path} --soc_version={soc} --log=error')


def as_batches(images: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    out, start = [], 0
    for size in sizes:
        out.append(images[start:start + size])
        start += size
    return out


def check_sizes(batch: int | None, available: int) -> list[int]:
    """The static batch once, or batch 1 and 7 for a dynamic one (the test split's first
    images)."""
    sizes = [batch] if batch else [1, 7]
    if sum(sizes) > available:
        raise UserError(f"the check needs {sum(sizes)} test images, the test split has "
                        f"{available}; lower --batch")
    return sizes
