"""What a study costs beyond its arithmetic: `study run` ÷ the same trials in a plain loop.

Runs a study file (default: the quickstart) through ``study run`` in a subprocess (Ray, Tune,
MLflow, checkpoints: everything a user gets), and the same trials one after another in a plain
in-process loop: one torch thread, ``study.train.fit`` only (no Ray, no MLflow, no checkpoints),
the data loaded outside the timing. The study shares its trials over ``--cores`` cores, so the
ratio printed is

    study wall seconds ÷ (loop seconds ÷ cores)

1.0 means the study runs at the speed of its arithmetic. Both are measured ``--repeats`` times,
interleaved (study, loop, study, loop, ...), so that machine noise hits both alike; the medians
and every ratio are printed. "wall" is the whole `study run` process (Python and Ray start-up
included); "in-study" is the time `study run` reports for itself (from the study file being
read to the last trial closing).

Each repeat also splits the study's core-seconds (in-study × cores) from Tune's results
(``result.json`` of every trial): the epochs themselves (the sum of ``epoch_seconds``: training
and evaluation), the rest of the trials' time (``time_total_s`` minus their epochs: MLflow calls,
Tune reports, checkpoints, data loading, each worker's first imports), and the time no trial runs
on a core (Ray's start and stop, the MLflow store's creation, starting workers, idle cores).

    python benchmarks/study_overhead.py                          # the quickstart, 2 repeats
    python benchmarks/study_overhead.py --repeats 3 --set train.epochs=10
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def breakdown(output_dir: Path) -> tuple[int, float, float]:
    """(trials, the trials' seconds, their epochs' seconds) from the study's Tune results."""
    trials, total, epochs = 0, 0.0, 0.0
    for result in sorted(output_dir.glob("ray/*/*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            trials += 1
            total += max(r["time_total_s"] for r in rows)
            epochs += sum(r.get("epoch_seconds", 0.0) for r in rows)
    return trials, total, epochs


def run_study(config_file: str, overrides: list[str], output_dir: Path) -> tuple[float, float]:
    """``study run`` in a subprocess; returns (wall seconds, the seconds it reports itself)."""
    command = [sys.executable, "-m", "study.cli", "run", config_file, "--quiet",
               "--set", f"output_dir={output_dir}"]
    for item in overrides:
        command += ["--set", item]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"study run failed (rc {done.returncode}):\n{done.stderr[-4000:]}")
    found = re.search(r"complete in ([0-9.]+)s", done.stderr)
    return wall, float(found.group(1)) if found else float("nan")


def plain_loop(config_file: str, overrides: list[str], output_dir: Path) -> tuple[float, int]:
    """Every trial of the study, one after another, with ``study.train.fit`` on one thread;
    returns (seconds inside fit, trained seeds). Data loading is not timed. The trials of a
    confirm stage are those the study in ``output_dir`` chose (its ``study.json``)."""
    import torch

    from study import data as data_registry
    from study import models
    from study.methods import build_method
    from study.plan import TrialSpec, confirm_trials, grid_trials
    from study.runner import read_state
    from study.schema import load_study
    from study.settings import TrainConfig
    from study.trial import TRAIN_FIELDS
    from study.train import fit, method_context, seed_everything

    torch.set_num_threads(1)
    config = load_study(config_file, overrides)
    if config.search.kind != "grid":
        sys.exit("the plain loop replays a grid study's trials; this study is an Optuna search")
    study_train = config.train.model_dump(mode="json")
    seconds, runs = 0.0, 0
    specs = grid_trials(config)
    entry = (read_state(output_dir)["runs"] or [{}])[-1]
    if entry.get("chosen"):  # the confirm stage, as the study ran it
        specs += confirm_trials([TrialSpec(**c["trial"]) for c in entry["chosen"]], entry["confirm_seeds"])
    for spec in specs:
        train = {**study_train, **spec.train}
        for seed in spec.seeds:
            data = data_registry.load_dataset(
                spec.dataset, root=config.data.root, val_fraction=config.data.val_fraction, seed=seed,
                download=config.data.download, **(config.data.options.get(spec.dataset) or {}))
            settings = TrainConfig(**{**{k: train[k] for k in TRAIN_FIELDS}, "seed": seed, "device": "cpu"})
            start = time.perf_counter()
            seed_everything(seed)
            model = models.build_model(spec.arch, data.input_shape, data.num_classes,
                                       config.model.options.get(spec.arch) or {})
            method = build_method(spec.method, spec.params, method_context(data, settings))
            fit(model, method, data, settings)
            seconds += time.perf_counter() - start
            runs += 1
    return seconds, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="study file overrides, for both sides (e.g. train.epochs=10)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved study and loop runs")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                        help="the cores the study shares its trials over (its Ray's CPUs)")
    args = parser.parse_args()

    walls, insides, loops = [], [], []
    with tempfile.TemporaryDirectory(prefix="study-overhead-") as tmp:
        for repeat in range(args.repeats):
            wall, inside = run_study(args.config, args.set, Path(tmp) / f"run{repeat}")
            loop, runs = plain_loop(args.config, args.set, Path(tmp) / f"run{repeat}")
            walls.append(wall), insides.append(inside), loops.append(loop)
            print(f"repeat {repeat + 1}: study {wall:.1f} s wall ({inside:.1f} s in-study), plain loop "
                  f"{loop:.1f} s for {runs} runs = {loop / args.cores:.1f} s over {args.cores} cores: "
                  f"{wall / (loop / args.cores):.2f}x wall, {inside / (loop / args.cores):.2f}x in-study",
                  flush=True)
            trials, in_trials, epochs = breakdown(Path(tmp) / f"run{repeat}")
            if trials:
                cores = inside * args.cores
                print(f"  in-study core-seconds {cores:.1f} ({inside:.1f} s x {args.cores}): epochs {epochs:.1f} "
                      f"(plain loop {loop:.1f}), the rest of the trials {in_trials - epochs:.1f} "
                      f"({(in_trials - epochs) / trials:.2f} s per trial, {trials} trials), no trial running "
                      f"{cores - in_trials:.1f}", flush=True)
    wall, inside, loop = (statistics.median(v) for v in (walls, insides, loops))
    print(f"median: study {wall:.1f} s wall, {inside:.1f} s in-study; plain loop {loop:.1f} s "
          f"({loop / args.cores:.1f} s over {args.cores} cores)")
    print(f"study ÷ arithmetic: {wall / (loop / args.cores):.2f}x wall, {inside / (loop / args.cores):.2f}x in-study")


if __name__ == "__main__":
    main()
