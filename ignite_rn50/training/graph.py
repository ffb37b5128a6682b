"""--graph: the whole train step (forward, loss, backward, loss scaling, optimizer step)
captured once as a device graph and replayed, so a small-batch step costs one launch
instead of a few hundred.

Ours because torch offers the capture (``torch.cuda.graph``) but nothing that keeps a
whole training step, its GradScaler and a changing learning rate working across replays:
``make_graphed_callables`` graphs forward/backward only, and ``torch.compile``'s
"reduce-overhead" mode leaves the optimizer step uncaptured. The rules of a captured step,
and how this class keeps them:

- inputs live at fixed addresses: each batch is copied into static buffers first;
- the first ``warmup_steps`` steps run eagerly on a side stream (real training steps: they
  create the optimizer's momentum buffers and the GradScaler's state, and let cuDNN pick
  its kernels), then one capture records the next step, which is then replayed;
- the captured optimizer step reads the lr from a device tensor: param groups keep their
  Python floats for the schedulers and checkpoints, and the tensor is refilled (one device
  fill, no host sync) when the host value changes;
- gradients are allocated by the captured backward and overwritten by every replay, so
  the step never zeroes them; GradScaler's overflow check and skip stay on the device
  (cuda's fused SGD takes the scale and the found-inf flag as tensors);
- autocast runs without its cache of cast weights, which would be freed at the end of the
  captured region while the graph still reads it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from ignite_rn50.errors import UserError
from ignite_rn50.system.device import GraphApi

StepBody = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class GraphedStep:
    """Calls ``body(images, targets) -> (loss, logits)`` on static buffers: eagerly for the
    first ``warmup_steps`` calls, then once under capture, then by replay."""

    def __init__(self, body: StepBody, optimizer: torch.optim.Optimizer, api: GraphApi | None,
                 warmup_steps: int = 3) -> None:
        self.body, self.optimizer, self.api = body, optimizer, api
        self.warmup_steps = warmup_steps
        self.eager_steps = 0
        self.graph: Any = None
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.lr_tensors: list[torch.Tensor] = []
        self._lr_values: list[float] = []

    def __call__(self, images: torch.Tensor, targets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        static_images, static_targets = self.stage(images, targets)
        if self.api is None or self.eager_steps < self.warmup_steps:
            self.eager_steps += 1
            return self._eager(static_images, static_targets)
        if self.graph is None:
            self._capture(static_images, static_targets)
        self.refresh_lr()
        self.graph.replay()
        assert self.outputs is not None
        return self.outputs

    def stage(self, images: torch.Tensor, targets: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy a batch into the static buffers (allocated like the first batch)."""
        if self.static is None:
            self.static = (torch.empty_like(images), torch.empty_like(targets))
        for name, new, old in (("images", images, self.static[0]),
                               ("targets", targets, self.static[1])):
            if new.shape != old.shape or new.dtype != old.dtype:
                raise UserError(f"--graph: a batch of {name} {tuple(new.shape)} {new.dtype} "
                                f"after the captured {tuple(old.shape)} {old.dtype}; a "
                                "captured step needs equal batches (drop --graph)")
        self.static[0].copy_(images, non_blocking=True)
        self.static[1].copy_(targets, non_blocking=True)
        return self.static

    def _eager(self, images: torch.Tensor, targets: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        if self.api is None:
            return self.body(images, targets)
        side, main = self.api.stream(), self.api.current_stream()
        side.wait_stream(main)
        with self.api.use_stream(side):
            out = self.body(images, targets)
        main.wait_stream(side)
        return out

    def _capture(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        assert self.api is not None
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates them in the graph
        self.graph = self.api.graph()
        with self.lr_as_tensors(), self.api.capture(self.graph):
            self.outputs = self.body(images, targets)

    @contextlib.contextmanager
    def lr_as_tensors(self) -> Iterator[None]:
        """During capture the param groups hold device tensors (what the captured step will
        read at every replay); afterwards their floats again."""
        groups = self.optimizer.param_groups
        if not self.lr_tensors:
            device = groups[0]["params"][0].device
            self.lr_tensors = [torch.tensor(float(g["lr"]), device=device) for g in groups]
            self._lr_values = [float(g["lr"]) for g in groups]
        floats = [g["lr"] for g in groups]
        for group, tensor in zip(groups, self.lr_tensors, strict=True):
            group["lr"] = tensor
        try:
            yield
        finally:
            for group, value in zip(groups, floats, strict=True):
                group["lr"] = value

    def refresh_lr(self) -> int:
        """Refill the lr tensors whose host value the schedule changed; returns how many."""
        changed = 0
        for i, group in enumerate(self.optimizer.param_groups):
            value = float(group["lr"])
            if value != self._lr_values[i]:
                self.lr_tensors[i].fill_(value)
                self._lr_values[i] = value
                changed += 1
        return changed
