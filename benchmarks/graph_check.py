"""--graph against the eager step: the same weights, batches and lr schedule for ``--steps``
steps, fp32 and fp16 AMP (GradScaler), then the largest difference of the losses and of the
final weights. On a GPU the graphed side really captures and replays; ``--device cpu`` runs
its bookkeeping only (the capture needs CUDA), a check of this script.

Last lines: ``<precision> max_loss_diff=<float> max_weight_diff=<float>``; fp32 should agree
to float tolerance (cuDNN may pick other kernels under capture), fp16 stay close.
"""

from __future__ import annotations

import copy

import torch
from common import parser, setup, synthetic
from ignite.engine import Events
from torch import nn

from ignite_rn50.data.pipelines import DeviceTrainData, Feed
from ignite_rn50.model.resnet import build_model
from ignite_rn50.optim.schedule import LrSchedule, ScheduleSpec
from ignite_rn50.system import device as dev
from ignite_rn50.system import precision as prec
from ignite_rn50.training.step import (
    Parts,
    create_trainer,
    make_graphed_train_step,
    make_train_step,
)


def run(model: nn.Module, precision: prec.Precision, device: torch.device, data: DeviceTrainData,
        steps: int, graph: bool) -> tuple[list[torch.Tensor], nn.Module]:
    opt = prec.make_optimizer(model.parameters(), device, precision,
                              prec.Sgd(0.1, 0.9, 5e-4, False))
    schedule = LrSchedule(opt, ScheduleSpec(0.1, milestones=(2,), gamma=0.2, warmup_iters=10))
    scaler = prec.make_grad_scaler(device, precision)
    criterion = nn.CrossEntropyLoss().to(device)
    if graph:
        parts = Parts(model=model, net=model, optimizer=opt, scaler=scaler,
                      criterion=criterion, eval_criterion=criterion, schedule=schedule,
                      precision=precision, memory_format=torch.contiguous_format)
        api = dev.graph_api(device) if device.type != "cpu" else None
        trainer = create_trainer(make_graphed_train_step(parts, device, api))
    else:
        trainer = create_trainer(make_train_step(model, opt, criterion,
                                                 prec.Amp(device, precision, scaler)))
    schedule.attach(trainer)
    losses: list[torch.Tensor] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: losses.append(e.state.output.clone()))
    epoch_length = len(data)
    trainer.run(data, max_epochs=steps // epoch_length)
    return losses, model


def compare(name: str, precision: prec.Precision, args, device: torch.device) -> None:
    torch.manual_seed(args.seed)
    start = build_model(args.depth, args.num_classes).to(device)
    data = DeviceTrainData(synthetic(args, args.batch_size * 10), device,
                           Feed(args.batch_size, seed=args.seed))  # epochs of 10 steps
    eager_losses, eager = run(copy.deepcopy(start), precision, device, data, args.steps, False)
    graph_losses, graphed = run(copy.deepcopy(start), precision, device, data, args.steps, True)
    loss_diff = max(abs(a.float() - b.float()).item()
                    for a, b in zip(eager_losses, graph_losses, strict=True))
    weight_diff = max((a.float() - b.float()).abs().max().item() for a, b in
                      zip(eager.state_dict().values(), graphed.state_dict().values(), strict=True)
                      if a.is_floating_point())
    print(f"{name} max_loss_diff={loss_diff:.3g} max_weight_diff={weight_diff:.3g}", flush=True)


def main() -> None:
    p = parser(__doc__.splitlines()[0], depth=50, image_size=32, batch_size=16, steps=50,
               warmup=0, repeats=None)
    args = p.parse_args()
    device = setup(args)
    print(f"ResNet-{args.depth} {args.image_size}x{args.image_size} bs{args.batch_size}, "
          f"{args.steps} steps (epochs of 10; lr warm-up over 10 steps, x0.2 after epoch 2) "
          f"on {device}")
    compare("fp32", prec.Precision(False, None, "native"), args, device)
    if device.type != "cpu":
        compare("fp16_amp", prec.Precision(True, torch.float16, "native"), args, device)


if __name__ == "__main__":
    main()
