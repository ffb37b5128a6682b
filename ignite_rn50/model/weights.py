"""Model weights from a file: our checkpoints, or the ModelZoo package's (mmcls 0.x) ones.

mmcls 0.x (mmcv's ``save_checkpoint``) writes ``{"meta", "state_dict", "optimizer"}`` with
the ResNet under ``backbone.`` and the classifier as ``head.fc.``; DDP-saved files add a
``module.`` prefix, and apex O2 runs store fp16 weights. The layers below those prefixes
have torchvision's names (conv1, bn1, layerL.B.{conv,bn}{1,2,3}, downsample.{0,1}), so a
prefix change maps one layout onto the other; values are cast to the model's dtypes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ignite_rn50.errors import UserError
from ignite_rn50.model.resnet import stem_of

# mmcls prefix -> ours, tried in order on each key
MMCLS_PREFIXES = (("backbone.", ""), ("head.fc.", "fc."))


def read_state_dict(path: Path, flag: str, weights: str | None = "raw"
                    ) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict in our key names, layout name) from any supported file. ``weights``
    (--weights): ``raw`` the trained model, ``ema`` the EMA of a run with --ema-momentum
    (its ``ema_model``), None the EMA where the file has one, else the model."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{flag} {path}: no such file; pass an existing checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise UserError(f"{flag} {path} is not a checkpoint that loads with weights_only=True "
                        f"({type(exc).__name__}{': ' + first if first else ''}); pass one of "
                        "this trainer's or an mmcls 0.x .pth") from None
    has_ema = isinstance(blob, dict) and isinstance(blob.get("ema_model"), dict)
    if weights == "ema" and not has_ema:
        raise UserError(f"--weights ema: {path} holds no EMA weights (a run without "
                        "--ema-momentum, or not this trainer's file); pass --weights raw")
    if has_ema and weights != "raw":
        return dict(blob["ema_model"]), "ignite_rn50 EMA"
    if isinstance(blob, dict) and isinstance(blob.get("model"), dict):
        return dict(blob["model"]), "ignite_rn50"
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise UserError(f"{flag} {path} holds no model weights (neither a 'model' nor a "
                        "'state_dict' of tensors); pass a checkpoint of this trainer or mmcls")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        return from_mmcls(state), "mmcls"
    return state, "state_dict"


def _from_mmcls(key: str) -> str:
    for theirs, ours in MMCLS_PREFIXES:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return key


def from_mmcls(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An mmcls state dict (``module.`` of DDP too) in our key names."""
    return {_from_mmcls(k.removeprefix("module.")): v for k, v in state.items()}


def to_mmcls(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our key names in mmcls's layout (the inverse of reading one)."""
    return {("head." + k if k.startswith("fc.") else "backbone." + k): v
            for k, v in state.items()}


def first_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """The first key (in the model's order) that is missing, extra or of another shape."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            return f"the file lacks '{key}' (shape {list(value.shape)})"
        if tuple(state[key].shape) != tuple(value.shape):
            return (f"'{key}' has shape {list(state[key].shape)} in the file, "
                    f"{list(value.shape)} in this model")
    extra = [k for k in state if k not in expected]
    return f"the file has '{extra[0]}', which this model lacks" if extra else None


def first_nonfinite(state: dict[str, torch.Tensor]) -> str | None:
    """The first floating tensor (in the file's order) holding NaN or inf, or None."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


def load_into(model: nn.Module, path: Path, flag: str, weights: str | None = "raw") -> str:
    """Copy the file's weights into ``model`` (cast to its dtypes); returns the layout name.
    A file of another depth or class count is one UserError naming the first mismatch, a
    file holding NaN/inf one naming the first such tensor."""
    state, layout = read_state_dict(path, flag, weights)
    theirs, ours = stem_of(state), stem_of(model.state_dict())
    if theirs and ours and theirs != ours:
        raise UserError(f"{flag} {path} was trained with the {theirs} stem, this model has the "
                        f"{ours} stem; pass --stem {theirs} (or start without {flag})")
    problem = first_mismatch(model, state)
    if problem is not None:
        raise UserError(f"{flag} {path} ({layout} layout) does not fit this model: {problem}; "
                        "pass the --depth and dataset/class count it was trained with")
    bad = first_nonfinite(state)
    if bad is not None:  # nothing evaluated, exported or trained from it could be right
        raise UserError(f"{flag} {path}: {bad} holds NaN/inf; pass a checkpoint with finite "
                        "weights (an earlier one of the run)")
    model.load_state_dict(state)
    return layout



FACTS_KEY = "data"  # our checkpoints' record of the data and network (training/checkpoints.py)


def read_facts(path: Path) -> dict:
    """What one of our checkpoints records of its data and network (dataset, class names,
    normalisation, image size, stem, depth, classes); {} for other files. mmcls files give
    their ``meta["CLASSES"]`` as the class names."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - read_state_dict names what is wrong with the file
        return {}
    if not isinstance(blob, dict):
        return {}
    facts = blob.get(FACTS_KEY)
    if isinstance(facts, dict):
        return dict(facts)
    meta = blob.get("meta")
    classes = meta.get("CLASSES") if isinstance(meta, dict) else None
    return {"class_names": [str(c) for c in classes]} if classes else {}
