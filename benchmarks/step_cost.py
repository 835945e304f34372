"""Cost of one training step per method, as a ratio to plain SGD, measured side by side.

Answers the reviewer's question "what is the computational complexity compared with weight
decay?". Every method runs the training loop's own step (``study.train.train_step``: penalty,
backward, after_backward, step, after_step) on the same batch; the methods take turns, round after
round, so that machine noise hits all of them alike. Reported: median seconds per step and the
ratio to `none` and to `weight-decay`.

    python benchmarks/step_cost.py                      # digits, lenet300, CPU
    python benchmarks/step_cost.py --arch lenet5 --dataset synthetic --data-option shape=1x28x28
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from study.cli import parse_assignments, pick_device
from study.data import load_dataset
from study.method import MethodContext
from study.methods import build_method, method_names
from study.models import build_model
from study.train import train_step


def step_timer(name: str, args: argparse.Namespace, bundle, x, y):
    torch.manual_seed(0)
    model = build_model(args.arch, bundle.input_shape, bundle.num_classes).to(x.device)
    context = MethodContext(len(bundle.train), bundle.num_classes, 1, math.ceil(len(bundle.train) / args.batch_size))
    method = build_method(name, {}, context)
    method.attach(model)
    model.to(x.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> float:
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_step(model, method, optimizer, x, y)
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--arch", default="lenet300")
    parser.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    parser.add_argument("--methods", default="none,weight-decay,l1,sensitivity-unspec,sensitivity-spec,l0,sparse-vd")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in method_names()]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; valid: {', '.join(method_names())}")
    device = pick_device(args.device)
    bundle = load_dataset(args.dataset, **parse_assignments(args.data_option, "--data-option")).to(device)
    x, y = next(iter(bundle.train.batches(args.batch_size, shuffle=False)))
    steps = {name: step_timer(name, args, bundle, x, y) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.warmup + args.rounds):
        for name, step in steps.items():
            elapsed = step()
            if round_ >= args.warmup:
                times[name].append(elapsed)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.arch} on {args.dataset}, batch {args.batch_size}, {device}, {args.rounds} steps each, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'method':<20} {'ms/step':>9} {'x none':>8} {'x weight-decay':>15}")
    for name in names:
        vs_none = median[name] / median["none"] if "none" in median else float("nan")
        vs_wd = median[name] / median["weight-decay"] if "weight-decay" in median else float("nan")
        print(f"{name:<20} {1000 * median[name]:>9.2f} {vs_none:>8.2f} {vs_wd:>15.2f}")


if __name__ == "__main__":
    main()
