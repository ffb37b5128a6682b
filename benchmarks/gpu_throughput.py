"""Training img/s of OUR step (build_model + the trainer's step, eager or --graph, +
DeviceTrainData in a trainer Engine) for the configurations that matter on a GPU;
``--device cpu --quick`` checks it here.

Each configuration: warm-up iterations (cudnn autotuning, torch.compile), then a window timed
between device-synchronised points; FpsMeter's own figure is printed beside it. Last lines:
``<config> img/s=<float>``, one per configuration.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import torch
from common import Window, parser, setup, synthetic
from ignite.engine import Engine, Events
from torch import nn

from ignite_rn50.data.pipelines import DeviceTrainData, Feed
from ignite_rn50.model.resnet import build_model
from ignite_rn50.optim.schedule import LrSchedule, ScheduleSpec
from ignite_rn50.system import device as dev
from ignite_rn50.system import precision as prec
from ignite_rn50.training import handlers
from ignite_rn50.training.assembly import Parts
from ignite_rn50.training.step import build_trainer, create_trainer, make_graphed_train_step


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    dtype: torch.dtype  # autocast dtype; float16 comes with a GradScaler, as in the trainer
    channels_last: bool
    compile: bool
    graph: bool = False  # the trainer's --graph: the whole step captured and replayed


CASES = [Case("bs512_bf16_cl_eager", 512, torch.bfloat16, True, False),
         Case("bs512_bf16_cl_compiled", 512, torch.bfloat16, True, True),
         Case("bs512_bf16_cl_graph", 512, torch.bfloat16, True, False, True),
         Case("1p_bs16_fp16_amp", 16, torch.float16, False, False),
         Case("1p_bs32_fp16_amp", 32, torch.float16, False, False),
         Case("1p_bs16_fp16_amp_graph", 16, torch.float16, False, False, True),
         Case("1p_bs32_fp16_amp_graph", 32, torch.float16, False, False, True)]


def trainer_for(case: Case, args, device: torch.device, batch: int) -> Engine:
    """The trainer's own step (engine.build_trainer's two kinds) on a fresh model."""
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    precision = prec.Precision(True, case.dtype, "native")
    model = build_model(args.depth, args.num_classes).to(device, memory_format=fmt)
    opt = prec.make_optimizer(model.parameters(), device, precision,
                              prec.Sgd(0.1, 0.9, 5e-4, False))
    criterion = nn.CrossEntropyLoss().to(device)
    parts = Parts(model=model,
                  net=torch.compile(model) if case.compile else model, optimizer=opt,
                  scaler=prec.make_grad_scaler(device, precision), criterion=criterion,
                  eval_criterion=criterion,
                  schedule=LrSchedule(opt, ScheduleSpec(0.1, milestones=(60, 120, 160))),
                  precision=precision, memory_format=fmt)
    if case.graph:  # the capture needs CUDA; on cpu (--quick) the same path runs eagerly
        api = dev.graph_api(device) if device.type != "cpu" else None
        return create_trainer(make_graphed_train_step(parts, device, api))
    return build_trainer(parts, device, graph=False)[0]


def measure(case: Case, args, device: torch.device) -> tuple[float, float | None]:
    batch = min(case.batch, args.max_batch) if args.max_batch else case.batch
    total = args.warmup + args.steps
    pool = min(total, args.pool_batches)  # batches held on the device, cycled
    data = DeviceTrainData(synthetic(args, batch * pool), device, Feed(batch, seed=args.seed),
                           channels_last=case.channels_last)
    trainer = trainer_for(case, args, device, batch)
    meter = handlers.FpsMeter(device, warmup=args.warmup)
    meter.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, meter.epoch_completed)
    window = Window(device, args.warmup, args.steps, batch)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: window.mark(e.state.iteration))
    trainer.run(data, max_epochs=1, epoch_length=total)
    return window.rate(), meter.fps


def main() -> None:
    p = parser(__doc__.splitlines()[0], depth=50, image_size=32, steps=100, warmup=15,
               repeats=None)
    p.add_argument("--quick", action="store_true",
                   help="tiny check: ResNet-18, 8x8, batch <= 2, 1 warm-up + 2 steps")
    p.add_argument("--max-batch", type=int, default=0, help="cap every batch size (0: none)")
    p.add_argument("--pool-batches", type=int, default=20, help="distinct batches on device")
    p.add_argument("--cases", nargs="*", default=[c.name for c in CASES],
                   choices=[c.name for c in CASES])
    args = p.parse_args()
    if args.quick:
        args.depth, args.image_size, args.warmup, args.steps = 18, 8, 1, 2
        args.max_batch = args.max_batch or 2
    device = setup(args)
    print(f"ResNet-{args.depth} {args.image_size}x{args.image_size} {args.num_classes} classes "
          f"on {device}, torch {torch.__version__}, {args.warmup} warm-up + {args.steps} steps")
    results: dict[str, float] = {}
    for case in (c for c in CASES if c.name in args.cases):
        started = time.perf_counter()
        try:
            rate, meter = measure(case, args, device)
            note = f"FpsMeter {meter:.1f}" if meter else ""
        except Exception as exc:  # noqa: BLE001 - report the case, go on with the others
            rate, note = float("nan"), f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        results[case.name] = rate
        print(f"  {case.name:<24}{rate:>10.1f} img/s  {note}  "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        gc.collect()
        if case.compile:
            torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for name, rate in results.items():
        print(f"{name} img/s={rate:.1f}")


if __name__ == "__main__":
    main()
