"""The run format: what a study writes to MLflow and what `study report` reads back.

This module is the one owner of the names both sides share: metric names, trial statuses,
phase codes, tag keys, param keys, artifact names, and the rules that turn a tracking URI or
a study folder into an absolute MLflow URI. The writer (:mod:`study.tracking`,
:mod:`study.trial`, :mod:`study.runner`) and the reader (:mod:`analysis.runs` and the rest of
``analysis/``) both import it, so a rename happens here once. It imports nothing but the
standard library (no torch, no pandas): ``analysis`` may import it and nothing else of
``study``.

The layout of one study in MLflow:

- experiment = the study's experiment name (default: the study name);
- parent run, named after the study: tags ``study.role=parent``, ``study.name``,
  ``study.config_hash``, ``study.search``, ``study.tune_name``, ``status``, the git commit,
  the study's description (``mlflow.note.content``); params ``study.*``; artifacts
  ``study.yaml`` (the validated study) and ``study.source.yaml`` (the file as written); when
  the study ends, summary metrics (``trials.<status>``, ``target_error``,
  ``compression_at_target.<method>``, ``test_error_at_target.<method>``); an interrupted
  study ends KILLED with ``status=interrupted``;
- child run per trial (per seed), named by :func:`run_name` (``sensitivity-spec lam=1e-3
  T=0.02 s0``): tags ``mlflow.parentRunId``, ``study.role=trial``,
  ``study.trial_id``, ``study.tune_trial_id``, ``status`` (running, finished, diverged,
  failed, pruned), ``study.stage`` (search or confirm), ``study.attempts``, ``study.device``,
  ``architecture`` (the remaining units, updated as epochs are logged); params ``method``, ``arch``,
  ``dataset``, ``seed``, every method parameter, ``train.<field>``, ``data.<option>``,
  ``model.<option>``; metrics: every numeric key of each epoch's record with step = epoch
  (``phase`` as ``phase_index``; the string ``architecture`` goes to the tag and to
  ``history.csv``); artifacts ``layers.csv`` and ``history.csv``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

# -- trial statuses (tag STATUS) ----------------------------------------------------------------
RUNNING = "running"
FINISHED = "finished"
DIVERGED = "diverged"
PRUNED = "pruned"  # stopped early by the scheduler (ASHA)
FAILED = "failed"
#: Every status a trial's run can carry, in the order reports list them.
STATUSES: tuple[str, ...] = (FINISHED, DIVERGED, PRUNED, FAILED, RUNNING)
#: The parent run's status when the study was interrupted (it ends KILLED).
INTERRUPTED = "interrupted"
#: MLflow's own run states, for runs that ended before they could set their status tag.
MLFLOW_STATES: dict[str, str] = {"FINISHED": FINISHED, "RUNNING": RUNNING, "SCHEDULED": RUNNING,
                                 "FAILED": FAILED, "KILLED": FAILED}

# -- phases -----------------------------------------------------------------------------------
REACH = "reach"
SPARSIFY = "sparsify"
PHASES: tuple[str, ...] = (REACH, SPARSIFY)
#: ``phase`` is a string in an epoch record and the number ``phase_index`` in MLflow.
PHASE_INDEX: dict[str, int] = {name: i for i, name in enumerate(PHASES)}
PHASE_NAMES: dict[int, str] = {i: name for name, i in PHASE_INDEX.items()}

# -- per-epoch metrics (the keys of an epoch record) --------------------------------------------
EPOCH = "epoch"
PHASE = "phase"
PHASE_INDEX_METRIC = "phase_index"
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
VAL_ERROR = "val_error"
TEST_LOSS = "test_loss"
TEST_ERROR = "test_error"
COMPRESSION = "compression"
SPARSITY = "sparsity"
NONZERO = "nonzero"
MEMORY_KB = "memory_kb"
EPOCH_SECONDS = "epoch_seconds"
#: The network's input units still read through a nonzero weight (the first prunable layer's
#: input features, or channels of a conv): the first number of ``architecture``.
INPUTS = "inputs"
#: The metrics every method logs each epoch, in the order frames and files list them.
STANDARD_METRICS: tuple[str, ...] = (
    TRAIN_LOSS, VAL_LOSS, VAL_ERROR, TEST_LOSS, TEST_ERROR,
    COMPRESSION, SPARSITY, NONZERO, MEMORY_KB, INPUTS, EPOCH_SECONDS,
)
#: The remaining units as a string, ``inputs-neurons.<layer 1>-...-neurons.<layer L>`` (e.g.
#: ``64-112-43-10``), the form the L0 and SeReNe papers print: a key of every epoch record and
#: of ``history.csv``, and the trial run's MLflow tag of the same name (the latest logged epoch's
#: value; MLflow metrics are numbers). Built by :func:`architecture`.
ARCHITECTURE = "architecture"
#: ``prune_schedule: plateau-bisect``: the T chosen at a pruning event (0: none was admissible)
#: and the epoch whose state the run rolled back to; logged only in the epochs that prune.
PRUNE_THRESHOLD = "prune_threshold"
PRUNE_FROM_EPOCH = "prune_from_epoch"
#: A (trial, epoch) point counts only when these are finite numbers.
KEY_METRICS: tuple[str, ...] = (TEST_ERROR, VAL_ERROR, COMPRESSION)
#: Metrics a search objective or a scheduler may use (plus ``remaining_pct.<layer>``).
OBJECTIVE_METRICS: tuple[str, ...] = (
    VAL_ERROR, VAL_LOSS, TRAIN_LOSS, TEST_ERROR, TEST_LOSS, COMPRESSION, SPARSITY, NONZERO, MEMORY_KB,
)

# Per-layer metrics: ``remaining_pct.<layer>`` (the share of the layer's weights left, in %,
# 0-100, as every table prints it) and the sensitivity statistics ``sens.<layer>.<stat>``.
#: The per-layer remaining share, in %: the metric's stem, the ``layers.csv`` column and the
#: column of the report's per-layer frame.
REMAINING_PCT = "remaining_pct"
REMAINING_PREFIX = f"{REMAINING_PCT}."
#: What studies logged before the rename: ``remaining.<layer>`` as a fraction (0-1). The reader
#: turns it into ``remaining_pct.<layer>`` (``legacy_remaining``); nothing writes it.
LEGACY_REMAINING_PREFIX = "remaining."
SENS_PREFIX = "sens."
#: Per layer, the output units (rows of a Linear weight, filters of a Conv) still in the network:
#: with a nonzero incoming weight and, where the next layer reads them, a nonzero outgoing one
#: (``study.sparsity``). A count, not a share.
NEURONS = "neurons"
NEURONS_PREFIX = f"{NEURONS}."
#: The prefixes of every per-layer metric (``<prefix><layer>`` or ``<prefix><layer>.<stat>``).
LAYER_METRIC_PREFIXES: tuple[str, ...] = (REMAINING_PREFIX, NEURONS_PREFIX, SENS_PREFIX)
SENS_STATS: tuple[str, ...] = ("q10", "q50", "q90", "mean", "frac_ge1", "frac_zero")


def remaining_key(layer: str) -> str:
    """``fc1`` → ``remaining_pct.fc1``."""
    return f"{REMAINING_PREFIX}{layer}"


def legacy_remaining(key: str) -> str | None:
    """``remaining.fc1`` (a fraction, as older studies logged it) → ``remaining_pct.fc1`` (its
    value times 100); None for any other key."""
    if key.startswith(LEGACY_REMAINING_PREFIX):
        return remaining_key(key[len(LEGACY_REMAINING_PREFIX):])
    return None


def neurons_key(layer: str) -> str:
    """``fc1`` → ``neurons.fc1``."""
    return f"{NEURONS_PREFIX}{layer}"


def architecture(inputs: float, neurons: Sequence[float]) -> str:
    """``64, [112, 43, 10]`` → ``64-112-43-10`` (means over seeds are rounded to units)."""
    return "-".join(f"{v:.0f}" for v in (inputs, *neurons))


def sens_key(layer: str, stat: str) -> str:
    """``(fc1, q50)`` → ``sens.fc1.q50``."""
    return f"{SENS_PREFIX}{layer}.{stat}"


def layer_of_metric(key: str) -> str | None:
    """The layer a per-layer metric belongs to (``remaining_pct.fc1``, ``neurons.fc1``,
    ``sens.fc1.q50`` → ``fc1``), else None."""
    if key.startswith(REMAINING_PREFIX):
        return key[len(REMAINING_PREFIX):]
    if key.startswith(NEURONS_PREFIX):
        return key[len(NEURONS_PREFIX):]
    if key.startswith(SENS_PREFIX) and key.rsplit(".", 1)[-1] in SENS_STATS:
        return key[len(SENS_PREFIX):].rsplit(".", 1)[0]
    return None


def is_objective_metric(key: str) -> bool:
    return key in OBJECTIVE_METRICS or key.startswith(REMAINING_PREFIX)


# -- tags ----------------------------------------------------------------------------------------
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_ROLE = "study.role"
ROLE_PARENT = "parent"
ROLE_TRIAL = "trial"
TAG_STATUS = "status"
TAG_ERROR = "error"
TAG_STUDY_NAME = "study.name"
TAG_CONFIG_HASH = "study.config_hash"
TAG_SEARCH = "study.search"
TAG_TUNE_NAME = "study.tune_name"
TAG_TRIAL_ID = "study.trial_id"  # the Tune trial id, plus -s<seed> when a trial trains several
TAG_TUNE_TRIAL_ID = "study.tune_trial_id"
TAG_ATTEMPTS = "study.attempts"
TAG_DEVICE = "study.device"
TAG_CREATE_TOKEN = "study.create_token"  # unique per created run: makes create_run retry-safe
#: Which stage of a tune-then-confirm study a trial belongs to: the search (configurations
#: compared on validation error) or the confirmation (each method's chosen configuration
#: retrained on fresh seeds). Reports use the confirm runs where they exist.
TAG_STAGE = "study.stage"
STAGE_SEARCH = "search"
STAGE_CONFIRM = "confirm"
STAGES: tuple[str, ...] = (STAGE_SEARCH, STAGE_CONFIRM)

# -- params --------------------------------------------------------------------------------------
METHOD = "method"
#: A study may train one registered method under several settings side by side, each its own
#: row in the report: ``methods: {sensitivity-spec: {...}, sensitivity-spec@sum: {aggregate:
#: sum}}``. The ``method`` param is that whole name; the part before ``@`` is the registered one.
VARIANT_SEP = "@"
ARCH = "arch"
DATASET = "dataset"
SEED = "seed"
#: Params that name what a trial trains, before its hyperparameters.
CORE_PARAMS: tuple[str, ...] = (METHOD, ARCH, DATASET)
#: Prefixes of the settings a trial logs besides its method's parameters.
TRAIN_PREFIX, DATA_PREFIX, MODEL_PREFIX = "train.", "data.", "model."
#: Params that say which seed, not which configuration.
SEED_PARAMS: tuple[str, ...] = (SEED, f"{TRAIN_PREFIX}seed")
#: Params that say where a trial ran, not what it is.
NON_CONFIG_PARAMS: tuple[str, ...] = (f"{TRAIN_PREFIX}device",)
#: The parent run's params (``study.<key>``).
STUDY_PARAM_PREFIX = "study."

# -- the parent run's summary metrics (logged when the study ends) ---------------------------------
#: ``trials.<status>``: the study's trials by status.
SUMMARY_TRIALS_PREFIX = "trials."
#: ``target_error``: the selection target (validation error, %), as the report resolves it.
SUMMARY_TARGET = "target_error"
#: ``compression_at_target.<method>`` and ``test_error_at_target.<method>``: each method at its
#: operating point (the report's selection rule); ``<arch>.<dataset>.`` comes before the method
#: (and after ``target_error``) when the study has several.
SUMMARY_COMPRESSION_PREFIX = "compression_at_target."
SUMMARY_TEST_ERROR_PREFIX = "test_error_at_target."
#: The tag MLflow shows as a run's description.
TAG_DESCRIPTION = "mlflow.note.content"


def split_variant(method: str) -> tuple[str, str]:
    """``"sensitivity-spec@sum"`` → ``("sensitivity-spec", "sum")``; no variant → ``(method, "")``."""
    base, _, variant = method.partition(VARIANT_SEP)
    return base, variant


# -- artifacts -----------------------------------------------------------------------------------
STUDY_YAML = "study.yaml"
STUDY_SOURCE_YAML = "study.source.yaml"
LAYERS_CSV = "layers.csv"
HISTORY_CSV = "history.csv"
LAYER_COLUMNS: tuple[str, ...] = ("layer", "total", "nonzero", "bias_total", "bias_nonzero", REMAINING_PCT)
#: The SQLite store a study keeps in its output folder by default.
STORE_FILE = "mlflow.db"
#: Where a study with a local store keeps its artifacts: ``<output_dir>/mlartifacts``.
ARTIFACTS_DIR = "mlartifacts"


# -- records → MLflow ------------------------------------------------------------------------------
def numeric_metrics(record: dict[str, Any]) -> dict[str, float]:
    """Every numeric key of an epoch record (no bools); ``phase`` becomes ``phase_index``."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == PHASE:
            if value in PHASE_INDEX:
                out[PHASE_INDEX_METRIC] = float(PHASE_INDEX[value])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def param_string(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value)) if all(isinstance(v, int) for v in value) else str(list(value))
    return str(value)


def trial_params(
    *,
    method: str,
    arch: str,
    dataset: str,
    seed: int,
    method_params: dict[str, Any],
    train: dict[str, Any],
    data: dict[str, Any],
    model: dict[str, Any],
) -> dict[str, str]:
    """A child run's params: method, arch, dataset, seed, the method's parameters as they
    are, then ``train.<field>``, ``data.<option>`` and ``model.<option>``."""
    out = {METHOD: method, ARCH: arch, DATASET: dataset, SEED: str(seed)}
    out.update({k: param_string(v) for k, v in method_params.items()})
    for prefix, values in ((TRAIN_PREFIX, train), (DATA_PREFIX, data), (MODEL_PREFIX, model)):
        out.update({f"{prefix}{k}": param_string(v) for k, v in values.items()})
    return out


# -- reading artifacts -----------------------------------------------------------------------------


def quiet_downloads() -> None:
    """Turn off the progress bar MLflow draws for every artifact it downloads (a reader fetches
    ``study.yaml`` and ``layers.csv`` files: a bar each would bury the output)."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# -- tracking URIs ---------------------------------------------------------------------------------
def sqlite_uri(path: str | Path) -> str:
    """``sqlite:////abs/path.db``: MLflow 3 needs an absolute path."""
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def resolve_tracking_uri(uri: str | None, output_dir: str | Path) -> str:
    """A study's tracking URI, made absolute.

    None → ``sqlite:///<abs output_dir>/mlflow.db``; a relative ``sqlite:///x.db`` or a bare
    path is taken relative to the working directory (a bare folder becomes a ``file:`` store);
    server URIs (``http://...``, ``postgresql://...``, ``databricks``) are kept as they are.
    """
    if uri is None or uri == "":
        return sqlite_uri(Path(output_dir) / STORE_FILE)
    return absolute_tracking_uri(uri)


def absolute_tracking_uri(uri: str) -> str:
    """A relative ``sqlite:///x.db``, ``file:x`` or bare path made absolute; others unchanged."""
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///"):]
        return uri if rest.startswith("/") else sqlite_uri(rest)
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return Path(uri[len("file:"):]).expanduser().resolve().as_uri()
    if "://" not in uri and not uri.startswith(("databricks", "file:")):
        path = Path(uri).expanduser()
        is_db = path.is_file() or path.suffix in (".db", ".sqlite", ".sqlite3")
        return sqlite_uri(path) if is_db else path.resolve().as_uri()
    return uri


def folder_tracking_uri(folder: str | Path) -> str:
    """The tracking URI of a study's output folder: ``mlflow.db`` in it, else ``mlruns/``."""
    folder = Path(folder)
    if (folder / STORE_FILE).is_file():
        return sqlite_uri(folder / STORE_FILE)
    if (folder / "mlruns").is_dir():
        return (folder / "mlruns").resolve().as_uri()
    raise ValueError(f"{folder} holds no MLflow store: expected {STORE_FILE} or mlruns/ in it")


def is_local_uri(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:"))


def local_store_path(uri: str) -> Path | None:
    """The file (``sqlite:///``) or folder (``file:``) of a local store; None for a server."""
    from urllib.parse import unquote, urlparse

    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path))
    return None


def store_exists(uri: str) -> bool:
    """Whether reading ``uri`` finds a store instead of creating an empty one (MLflow creates
    a missing SQLite file or ``file:`` folder when it opens it); a server is assumed to exist."""
    path = local_store_path(uri)
    return path is None or path.exists()


# -- run names ---------------------------------------------------------------------------------------
#: Short names of parameters in run names (the paper's T).
PARAM_ABBREVIATIONS: dict[str, str] = {"threshold": "T"}


def short_number(value: Any) -> str:
    """A number as short as it reads unambiguously: 0.001 → ``1e-3``, 0.02 → ``0.02``,
    1e-05 → ``1e-5``, 3.0 → ``3``; anything else as ``str``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (value == int(value) and abs(value) < 1e5):
        return str(int(value))
    plain = f"{value:g}"
    mantissa, exponent = f"{value:.6e}".split("e")
    scientific = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return scientific if len(scientific) < len(plain) else plain.replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")


def params_text(params: dict[str, Any]) -> str:
    """``lam=1e-3 T=0.02``: parameters as run names and `study status` show them."""
    return " ".join(f"{PARAM_ABBREVIATIONS.get(k, k)}={short_number(v)}" for k, v in params.items())


def run_name(method: str, params: dict[str, Any], seed: int, stage: str = STAGE_SEARCH) -> str:
    """A trial run's name: the method, the parameters the study sets or searches, the seed and,
    for the confirm stage, ``confirm``: ``sensitivity-spec lam=1e-3 T=0.02 s0``."""
    parts = [method, *([params_text(params)] if params else []), f"s{seed}"]
    if stage == STAGE_CONFIRM:
        parts.append(STAGE_CONFIRM)
    return " ".join(parts)
