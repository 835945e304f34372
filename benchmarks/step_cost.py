"""Cost of one training step per method, as a ratio to plain SGD, measured side by side.

Answers the reviewer's question "what is the computational complexity compared with weight
decay?". Every method runs the training loop's own step (``study.train.train_step``: the method's
forward, penalty, backward, after_backward, step, after_step) on the same batch; the methods take
turns, round after round, so that machine noise hits all of them alike. Reported: median seconds
per step and the ratio to `none` and to `weight-decay`.

With ``--epochs N`` it times whole epochs instead: every batch of the training split through the
step, then the method's end of epoch and its per-epoch metrics (what the training loop adds,
without the evaluation, which costs the same for every method), the methods taking turns epoch
by epoch.

``--clock cpu`` measures the process's CPU time instead of wall time: on a machine shared with
other jobs, with ``--threads 1``, it leaves out the time the process waited for a core.

    python benchmarks/step_cost.py                      # digits, lenet300, CPU
    # MNIST-shaped LeNet-300 and LeNet-5 (synthetic 1x28x28 batches), one thread, batch 100:
    python benchmarks/step_cost.py --threads 1 --dataset synthetic --data-option shape=1x28x28 \\
        --methods none,sensitivity-spec,sensitivity-unspec
    python benchmarks/step_cost.py --threads 1 --arch lenet5 --dataset synthetic --data-option shape=1x28x28 \\
        --methods none,sensitivity-spec,sensitivity-unspec --rounds 10
    # whole epochs on the full MNIST (idx files under <root>/MNIST/raw/):
    python benchmarks/step_cost.py --threads 1 --dataset mnist --data-root ../shared/data/mnist \\
        --methods none,sensitivity-spec,sensitivity-unspec --epochs 3 --clock cpu
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from study.data import load_dataset
from study.methods import build_method, method_names
from study.models import build_model
from study.options import parse_assignments
from study.settings import TrainConfig, choose_device
from study.train import method_context, train_step

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timer(name: str, args: argparse.Namespace, bundle, device: str,
          clock: Callable[[], float]) -> Callable[[], float]:
    """A function that runs one unit (a step on the first batch, or an epoch) and returns its
    duration."""
    torch.manual_seed(0)
    model = build_model(args.arch, bundle.input_shape, bundle.num_classes).to(device)
    context = method_context(bundle, TrainConfig(epochs=max(1, args.epochs), batch_size=args.batch_size))
    method = build_method(name, {}, context)
    method.attach(model)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    cuda = device.startswith("cuda")
    first = next(iter(bundle.train.batches(args.batch_size, shuffle=False)))
    generator = torch.Generator().manual_seed(0)
    epoch = [0]

    def run() -> None:
        if not args.epochs:
            train_step(model, method, optimizer, *first)
            return
        epoch[0] += 1
        for x, y in bundle.train.batches(args.batch_size, shuffle=True, generator=generator):
            train_step(model, method, optimizer, x, y)
        method.end_epoch(model, epoch[0], "reach")
        method.epoch_metrics(model)

    def timed() -> float:
        if cuda:
            torch.cuda.synchronize()
        start = clock()
        run()
        if cuda:
            torch.cuda.synchronize()
        return clock() - start

    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-root", default=None, help="where data sets live (as `study train`)")
    parser.add_argument("--arch", default="lenet300")
    parser.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    parser.add_argument("--methods",
                        default="none,weight-decay,l1,sensitivity-unspec,sensitivity-spec,l0,sparse-vd")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps first (with --epochs: one untimed epoch, or none if 0)")
    parser.add_argument("--epochs", type=int, default=0,
                        help="time this many whole epochs per method instead of steps")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or the process's CPU time (for --threads 1 on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in method_names()]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; valid: {', '.join(method_names())}")
    device = choose_device(args.device)
    if args.clock == "cpu" and device != "cpu":
        parser.error(f"--clock cpu measures CPU time; it cannot time work on {device}")
    bundle = load_dataset(args.dataset, root=args.data_root, **parse_assignments(args.data_option, "--data-option")).to(device)
    units = {name: timer(name, args, bundle, device, CLOCKS[args.clock]) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    warmup = 1 if args.epochs and args.warmup else args.warmup
    for round_ in range(warmup + (args.epochs or args.rounds)):
        for name, unit in units.items():
            elapsed = unit()
            if round_ >= warmup:
                times[name].append(elapsed)
    median = {name: statistics.median(t) for name, t in times.items()}
    what = f"{args.epochs} epochs" if args.epochs else f"{args.rounds} steps"
    print(f"{args.arch} on {args.dataset}, batch {args.batch_size}, {device}, {what} each, "
          f"torch threads {torch.get_num_threads()}, {args.clock} clock")
    unit = "s/epoch" if args.epochs else "ms/step"
    scale = 1 if args.epochs else 1000
    print(f"{'method':<20} {unit:>9} {'x none':>8} {'x weight-decay':>15}")
    for name in names:
        vs_none = median[name] / median["none"] if "none" in median else float("nan")
        vs_wd = median[name] / median["weight-decay"] if "weight-decay" in median else float("nan")
        print(f"{name:<20} {scale * median[name]:>9.2f} {vs_none:>8.2f} {vs_wd:>15.2f}")


if __name__ == "__main__":
    main()
