"""The `study` command: train one model, run or validate a study, report on finished runs.

Building the parser imports nothing heavy (no torch, pydantic or rich): each command imports
what it needs when it runs, so ``study --help`` answers at once. One module for the one concept
"the command line" (a little over 400 lines): each command's handler sits next to its parser,
and the work itself lives in the modules they call.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import textwrap
import time
import typing
from pathlib import Path
from typing import Any, Sequence


@functools.cache
def _rich_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


class _LazyConsole:
    """rich's stderr console, imported on first use."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_rich_console(), name)


console = _LazyConsole()


class _Help(argparse.HelpFormatter):
    """Shows each option's default (none for flags and repeatable options); wraps each line of
    a description on its own and leaves indented lines (the examples) as they are."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(line if line.startswith("  ") or not line.strip()
                         else textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
                         for line in text.splitlines())

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._AppendAction)):
            return text
        return text + (" (default: none)" if action.default is None else " (default: %(default)s)")


#: Exit codes, the same for every command (the README's one table, "Exit codes").
EXIT_OK = 0  # done; `study run`: every trial ended finished, diverged or pruned
EXIT_FAILED = 1  # `study run`: some trial failed (or one no retry can fix stopped the study)
EXIT_BAD_INPUT = 2  # a one-line error before anything ran: file, value, data, device
EXIT_DIVERGED = 3  # `study train`: the run diverged (non-finite loss)
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C) or SIGTERM; a study continues with `study run FILE --resume`
EXIT_HELP = ("exit codes: 0 done (study run: every trial finished, diverged or pruned), 1 some trial "
             "failed, 2 bad input, 3 diverged (study train), 130 interrupted (SIGINT/SIGTERM)")


def _say(text: str) -> None:
    """A plain line on stderr (no rich markup: paths and lists hold brackets)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _finite(value: Any) -> Any:
    """JSON has no infinity: an all-pruned model's compression is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def layer_table(layers: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    from study.runformat import REMAINING_PCT

    table = Table(title="final per-layer sparsity")
    for col in ("layer", "weights", "nonzero", "remaining %", "biases", "nonzero biases"):
        table.add_column(col, justify="right")
    for row in layers:
        table.add_row(
            str(row["layer"]), f"{row['total']:,}", f"{row['nonzero']:,}", f"{row[REMAINING_PCT]:.2f}",
            f"{row['bias_total']:,}", f"{row['bias_nonzero']:,}",
        )
    return table


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from study import data as data_registry
    from study import models
    from study.methods import build_method, method_class
    from study.options import parse_assignments
    from study.preflight import check_device, largest_initial_weight, phase_error, threshold_warning
    from study.progress import EpochPrinter
    from study.settings import TrainConfig, choose_device
    from study.train import check_prune_schedule, fit, method_context, seed_everything

    method_params = parse_assignments(args.param, "--param")
    model_options = parse_assignments(args.model_option, "--model-option")
    data_options = parse_assignments(args.data_option, "--data-option")
    check_prune_schedule(method_class(args.method), args.prune_schedule)  # fail fast, before loading data
    check_device(args.device, "--device")
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{**settings, "device": choose_device(args.device)})
    seed_everything(args.seed)
    bundle = data_registry.load_dataset(
        args.dataset, root=args.data_root, val_fraction=args.val_fraction, seed=args.seed,
        download=args.download, **data_options,
    ).to(config.device)
    model = models.build_model(args.arch, bundle.input_shape, bundle.num_classes, model_options)
    method = build_method(args.method, method_params, method_context(bundle, config))
    problem = phase_error(args.method, method_params, config.epochs, config.reach_epochs, config.target_error,
                          ("--epochs", "--reach-epochs", "--target-error"))
    if problem:
        raise ValueError(problem)
    warning = threshold_warning(getattr(method.params, "threshold", None), largest_initial_weight(model),
                                "--param threshold", args.arch)
    if warning:
        _say(warning)
    if not args.quiet:
        params = " ".join(f"{k}={_show(v)}" for k, v in vars(method.params).items()) or "no parameters"
        console.print(
            f"[bold]{args.method}[/] on [bold]{args.dataset}[/] ({len(bundle.train)} train / {len(bundle.val)} val / "
            f"{len(bundle.test)} test), {args.arch}, {config.device}: {params}",
            highlight=False, soft_wrap=True,
        )
    result = fit(model, method, bundle, config, callbacks=[EpochPrinter(config.epochs, args.quiet)])
    if not args.quiet:
        console.print(layer_table(result.layers))
    last = result.history[-1]
    console.print(  # the one line --quiet prints too
        f"status {result.status}: test error {last['test_error']:.2f}%, compression {last['compression']:.2f}x, "
        f"{int(last['nonzero']):,} nonzero weights, {last['memory_kb']:.2f} kB",
        highlight=False, soft_wrap=True,
    )
    if args.json:
        out = {
            "dataset": args.dataset, "arch": args.arch, "method": args.method, "seed": args.seed,
            "params": {k: _finite(v) for k, v in vars(method.params).items()},
            "train": vars(config), "model_options": model_options, "status": result.status,
            "history": [{k: _finite(v) for k, v in r.items()} for r in result.history],
            "layers": result.layers,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    if args.save:
        torch.save(model.state_dict(), args.save)
    return EXIT_OK if result.status == "finished" else EXIT_DIVERGED


def add_train_settings(p: argparse.ArgumentParser) -> None:
    """One flag per field of :class:`study.settings.TrainConfig`, with its default and help
    (``--device`` defaults to ``auto``)."""
    from study.settings import AUTO, DEVICE_HELP, TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        options: dict[str, Any] = {"default": f.default, "help": f.metadata["help"].replace("%", "%%")}
        if f.name == "device":
            options.update(default=AUTO, help=DEVICE_HELP)
        if typing.get_origin(kind) is typing.Literal:
            options["choices"] = typing.get_args(kind)
        else:
            options["type"] = next(t for t in typing.get_args(kind) or (kind,) if t is not type(None))
        p.add_argument("--" + f.name.replace("_", "-"), **options)


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from study.settings import ARCH, DATASET, VAL_FRACTION

    p = sub.add_parser(
        "train", help="train one model with one method and print its per-epoch trajectory",
        description="Train one model with one sparsification method through the two phases "
        "(reach performance, then sparsify) and print one row per epoch.\n"
        "Checks before training: the device exists, the sparsify phase can start (a one-line error, "
        "exit 2), the threshold is not above every initial weight (a warning).\n" + EXIT_HELP + ".",
        formatter_class=_Help,
        epilog=_examples(
            "study train --method sensitivity-spec --param lam=1e-3 --param threshold=2e-2",
            "study train --method sparse-vd --optimizer adam --lr 1e-3 --epochs 200 --json vd.json",
            "study train --dataset mnist10k --data-root ../shared/data/mnist-t10k --arch lenet5 --device cuda",
        ),
    )
    p.add_argument("--dataset", default=DATASET, help="data set name (see `study list datasets`)")
    p.add_argument("--arch", default=ARCH, help="architecture name (see `study list archs`)")
    p.add_argument("--method", default="sensitivity-unspec",
                   help="sparsification method (see `study list methods`)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="method hyperparameter, repeatable, e.g. --param lam=1e-3 --param threshold=1e-2 "
                   "(default: the method's defaults, see `study list methods`)")
    p.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="architecture option, repeatable, e.g. --model-option relu=true (lenet5) "
                   "(default: the architecture's defaults, see `study list archs`)")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="data set option, repeatable, e.g. --data-option shape=3x32x32 (synthetic) "
                   "(default: the data set's defaults, see `study list datasets`)")
    add_train_settings(p)
    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                   help="fraction of the training set held out for validation")
    p.add_argument("--data-root", default=None,
                   help="where data sets live (default: $STUDY_DATA_ROOT, else ~/.cache/sensitivity-study/data)")
    p.add_argument("--download", action="store_true", help="let torchvision download missing data sets")
    p.add_argument("--json", metavar="FILE", help="write the per-epoch history and final per-layer table here")
    p.add_argument("--save", metavar="FILE", help="save the final model state_dict here")
    p.add_argument("--quiet", action="store_true", help="print only the final line")
    p.set_defaults(func=cmd_train)


LIST_SECTIONS = ("datasets", "archs", "methods")


def _show(value: Any) -> str:
    """A default as one would type it on the command line."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value) or "''"


def _options(defaults: dict[str, Any]) -> str:
    return " ".join(f"{k}={_show(v)}" for k, v in defaults.items()) or "(no options)"


def cmd_list(args: argparse.Namespace) -> int:
    from study.options import option_defaults

    sections = [args.section] if args.section else list(LIST_SECTIONS)
    if "datasets" in sections:
        from study.data import DATASETS

        print("data sets (options with their defaults; --data-option KEY=VALUE):")
        for name, loader in DATASETS.items():
            print(f"  {name:<20} {_options(option_defaults(loader))}")
    if "archs" in sections:
        from study.models import COMMON_OPTIONS, MODELS

        print(f"architectures (options with their defaults; --model-option KEY=VALUE; all also take "
              f"{_options(COMMON_OPTIONS)}, a saved state_dict file to start from):")
        for name, builder in MODELS.items():
            print(f"  {name:<20} {_options(option_defaults(builder))}")
    if "methods" in sections:
        from study.methods import METHODS, default_params, param_types

        print("methods (parameters with their defaults; --param KEY=VALUE):")
        for name, cls in METHODS.items():
            print(f"  {name:<20} {cls.citation}")
            types = param_types(name)
            params = [f"{k}={_show(v)}" + (f" ({'|'.join(typing.get_args(types[k]))})"
                                           if typing.get_origin(types[k]) is typing.Literal else "")
                      for k, v in default_params(name).items()]
            print(f"  {'':<20} " + ("  ".join(params) or "(no parameters)"))
    return 0


def _load_study(args: argparse.Namespace) -> Any:
    from study.schema import load_study

    return load_study(args.file, args.set or ())


def cmd_validate(args: argparse.Namespace) -> int:
    from study.plan import describe_plan
    from study.preflight import check_study

    config = _load_study(args)
    warnings = check_study(config, args.address)  # data, devices, GPUs (errors), thresholds (warnings)
    print(f"{args.file}: valid study {config.name!r}" + (f" ({config.description})" if config.description else ""))
    print(describe_plan(config))
    for warning in warnings:
        _say(warning)
    if args.show:
        print(config.to_yaml(), end="")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from study.plan import describe_plan
    from study.runner import load_optuna_study, run_study

    from study.cli_runs import already_complete, record_in_index

    config = _load_study(args)
    done = None if args.resume or args.force else already_complete(config)
    if done:
        _say(done)
        return 0
    if not args.quiet:
        _say(describe_plan(config))
    record_in_index(config, args.file)
    start = time.perf_counter()
    outcome = run_study(config, address=args.address, resume=args.resume, source_text=Path(args.file).read_text())
    took = time.perf_counter() - start
    counts = ", ".join(f"{n} {status}" for status, n in sorted(outcome.statuses.items())) or "no trial runs"
    state = "complete" if outcome.complete else "interrupted" if outcome.interrupted else "stopped"
    _say(f"study {config.name} {state} in {took:.1f}s: {counts}")
    _say(f"MLflow: {outcome.tracking_uri}, experiment {config.experiment_name!r}, parent run {outcome.parent_run_id}")
    _say(f"browse: mlflow ui --backend-store-uri {outcome.tracking_uri}")
    if outcome.optuna_study and outcome.complete:
        study = load_optuna_study(outcome.output_dir, outcome.optuna_study)
        names = [o.metric for o in config.search.objectives]
        best = study.best_trials if len(names) > 1 else [study.best_trial]
        _say(f"Optuna {'Pareto set' if len(names) > 1 else 'best trial'} ({outcome.optuna_storage}, "
             f"study {outcome.optuna_study}):")
        for t in best:
            values = ", ".join(f"{n} {v:.4g}" for n, v in zip(names, t.values))
            _say(f"  #{t.number} {values}  {t.params}")
    if outcome.interrupted:
        _say(f"interrupted: continue with study run {args.file} --resume")
        return EXIT_INTERRUPTED
    if outcome.error:
        _say(f"error: {outcome.error}")
        _say(f"fix it, then continue with study run {args.file} --resume (tracebacks: {outcome.log_path})")
        return EXIT_FAILED
    if outcome.failed or not outcome.complete:
        _say(f"some trials failed (tracebacks: {outcome.log_path})")
        return EXIT_FAILED
    return EXIT_OK


def add_study_parsers(sub: argparse._SubParsersAction) -> None:
    sets = {"action": "append", "metavar": "KEY=VALUE",
            "help": "override a study field, repeatable; dotted keys, YAML values, e.g. "
                    "--set train.epochs=5 --set 'methods.l1.lam=[1e-4, 1e-3]' (default: the file as written)"}
    p = sub.add_parser(
        "run", help="run a study: its trials on Ray Tune, logged to MLflow", formatter_class=_Help,
        description="Run every trial of a study on Ray Tune (in-process on every core, or on the cluster "
        "at --address / $RAY_ADDRESS) and log each trial to MLflow as a child of the study's parent run.\n"
        "Before Ray starts it checks what `study validate` checks. Ctrl-C or SIGTERM stops it cleanly "
        "(continue with --resume); a trial error no retry can fix (missing data, a bad option) stops it at "
        "once. Tracebacks go to <output_dir>/logs/.\n" + EXIT_HELP + ".",
        epilog=_examples(
            "study run configs/quickstart.yaml",
            "study run configs/quickstart.yaml --set train.epochs=5 --set 'seeds=[0, 1, 2]'",
            "study run configs/quickstart.yaml --resume      # continue an interrupted run",
        ),
    )
    p.add_argument("file", help="study YAML file")
    p.add_argument("--set", **sets)
    p.add_argument("--address", default=None,
                   help="join this Ray cluster (e.g. 10.0.0.1:6379, started with `ray start --head`) "
                   "(default: $RAY_ADDRESS, else start Ray in-process)")
    p.add_argument("--resume", action="store_true",
                   help="continue the study's last interrupted run (Tuner.restore) instead of starting a new one")
    p.add_argument("--force", action="store_true",
                   help="run the study again even when its latest run (same study file and --set) is complete")
    p.add_argument("--quiet", action="store_true", help="do not print the plan first")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a study file and print the expanded plan", formatter_class=_Help,
                       description="Validate a study file (names, parameters, options) and print how many "
                       "trials of which method it would run. Also checks this machine as `study run` does "
                       "before Ray starts: the data sets' files (or data.download), the devices and GPUs "
                       "(when Ray runs in-process: no $RAY_ADDRESS), and warns of a threshold above every "
                       "initial weight.\n" + EXIT_HELP + ".",
                       epilog=_examples(
                           "study validate configs/quickstart.yaml",
                           "study validate configs/quickstart.yaml --set 'methods.l1.lam=[1e-5, 1e-4]' --show",
                       ))
    p.add_argument("file", help="study YAML file")
    p.add_argument("--set", **sets)
    p.add_argument("--address", default=None,
                   help="check as for a study on this Ray cluster: its nodes hold the data and devices, so a "
                   "data set missing here is a warning and devices are not checked (default: $RAY_ADDRESS, "
                   "else check this machine, as an in-process `study run` would)")
    p.add_argument("--show", action="store_true", help="also print the full study with every default filled in")
    p.set_defaults(func=cmd_validate)

    from study.cli_runs import add_parsers

    add_parsers(sub, sets)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="study", formatter_class=_Help,
        description="Hyperparameter studies of sensitivity-driven sparsification (Tartaglione et al., "
        "NeurIPS 2018) against baseline sparsifiers, on Ray Tune with MLflow tracking.",
        epilog=_examples(
            "study train --method sensitivity-spec --epochs 20      # one run, one row per epoch",
            "study run configs/quickstart.yaml                      # a study on Ray Tune",
            "study report configs/quickstart.yaml                   # its tables and figures",
        ) + "\n\n`study COMMAND --help` lists a command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parser(sub)
    add_study_parsers(sub)
    p = sub.add_parser("list", help="list the registered data sets, architectures and methods, with their options",
                       formatter_class=_Help,
                       description="List the registered data sets and architectures with their options, and the "
                       "methods with their citation and parameters, each with its default.",
                       epilog=_examples("study list", "study list methods"))
    p.add_argument("section", nargs="?", choices=LIST_SECTIONS, help="only this section (default: all)")
    p.set_defaults(func=cmd_list)
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops a command as Ctrl-C does (`study run` handles both itself)


def main(argv: Sequence[str] | None = None) -> int:
    import signal
    import threading

    parser = build_parser()
    args = parser.parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        from rich.markup import escape

        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        console.print(f"[red]error:[/] {escape(' '.join(str(message).split()))}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
