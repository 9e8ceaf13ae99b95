"""Typed configuration: one msgspec Struct per YAML section, loaded with clear, path-naming errors.

A YAML file may start from another with ``base: other.yaml`` (a path relative to the file, or a shipped config's
name); its keys are merged over the base's, section by section. The shipped configs are package data
(``dualhrq/configs``): a ``--config`` that is not a file is looked up there by name (``train_eurusd`` or
``train_eurusd.yaml``), so an installed ``dualhrq`` finds them from any directory. Unknown keys, wrong types and
out-of-range values are refused with ``<file>: <section.key.path>: <what was expected>``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from dualhrq.errors import ConfigurationError

PosInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PosFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
Prob = Annotated[float, msgspec.Meta(ge=0, le=1)]
MAX_PORT = 65535
Port = Annotated[int, msgspec.Meta(ge=0, le=MAX_PORT)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every config section: unknown keys are errors, values are immutable once loaded."""


# ---------------------------------------------------------------- model


class ModuleConfig(_Section):
    """One recurrent module (H or L): a stack of post-norm transformer blocks."""

    hidden_dim: Annotated[int, msgspec.Meta(ge=8)]
    num_layers: PosInt = 4
    num_heads: PosInt = 8
    ffn_dim: PosInt = 1024  # SwiGLU inner width


class ModelConfig(_Section):
    h_module: ModuleConfig
    l_module: ModuleConfig
    n_cycles: PosInt = 2  # N: H updates per segment
    t_steps: PosInt = 2  # T: L steps per H update
    coarse_len: PosInt = 20  # T_h: coarse bars per sample (H tokens)
    fine_len: PosInt = 48  # T_l: fine bars per sample (L tokens)
    coarse_features: PosInt = 16  # width of one H token (set by dualhrq.features)
    fine_features: PosInt = 18  # width of one L token (dualhrq.features.FINE_FEATURES)
    regime_features: PosInt = 20
    num_regimes: Annotated[int, msgspec.Meta(ge=2, le=32)] = 5
    pattern_dim: PosInt = 32  # P: width of one retrieved pattern context vector
    pattern_k: PosInt = 8  # K: neighbours per query
    instrument_vocab: Annotated[int, msgspec.Meta(ge=2)] = 256  # id 0 is "unknown"
    instrument_dim: PosInt = 64
    timeframe_vocab: Annotated[int, msgspec.Meta(ge=2)] = 16  # id 0 is "unknown"
    timeframe_dim: PosInt = 32
    regime_hidden: PosInt = 64
    fusion_hidden: PosInt = 192
    head_hidden: PosInt = 128
    # What every head reads of a level's tokens: the newest ("last"), their mean, or both side by side.
    # A mean alone blurs which bar is newest, and the decision is about the newest bar.
    readout: Literal["last", "mean", "last+mean"] = "last+mean"
    quantity_min: float = 0.0
    quantity_max: float = 1.0
    norm_eps: PosFloat = 1e-5

    def __post_init__(self) -> None:
        for name in ("h_module", "l_module"):
            m: ModuleConfig = getattr(self, name)
            if m.hidden_dim % m.num_heads:
                raise ValueError(f"{name}.hidden_dim ({m.hidden_dim}) must be divisible by num_heads ({m.num_heads})")
        if self.quantity_max <= self.quantity_min:
            raise ValueError("quantity_max must be greater than quantity_min")


class ActConfig(_Section):
    """Adaptive computation time: how many segments run per sample."""

    min_segments: PosInt = 1
    max_segments: PosInt = 4
    exploration_prob: Prob = 0.1  # training: chance of drawing a random minimum segment count
    fixed_segments: NonNegInt = 0  # serve: >0 runs exactly this many segments (predictable latency)

    def __post_init__(self) -> None:
        if self.min_segments > self.max_segments:
            raise ValueError("min_segments must be <= max_segments")
        if self.fixed_segments > self.max_segments:
            raise ValueError("fixed_segments must be <= max_segments")


class BudgetConfig(_Section):
    """Parameter caps per component, checked by `dualhrq params --strict` (and CI)."""

    h_max: PosInt = 8_500_000
    l_max: PosInt = 18_000_000
    heads_max: PosInt = 300_000
    conditioning_max: PosInt = 500_000
    total_min: NonNegInt = 26_500_000
    total_max: PosInt = 27_500_000


# ---------------------------------------------------------------- data and training


class DataConfig(_Section):
    # A bundled dataset name (`dualhrq data list`) or a CSV/Parquet path, or a list of them: one model then
    # trains across all of them (one instrument each, told apart by the instrument embedding), and their
    # held-out tails start at one time, the earliest of each one's own train_fraction cut, so that no
    # instrument trains on a time another is tested on. All of a list must share one fine timeframe.
    dataset: str | list[str] = "eurusd_1h"
    instrument: str = ""  # defaults to the dataset's own instrument name (one dataset only)
    coarse_rule: str = ""  # fixed coarse period ('4h', '1d', '1w'); default by the fine one: intraday -> 1d, 1d -> 1w
    train_fraction: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.8  # rest is the held-out tail
    label_horizon: PosInt = 1  # fine bars ahead for the fine label
    cost_bps: NonNegFloat = 1.0  # round-trip cost used by action labels and evaluation
    action_vol_threshold: NonNegFloat = 0.5  # move beyond the cost an action label needs, in horizon volatilities
    timestamps: Literal["open", "close"] = "open"  # what a user file's timestamp marks (bundled sets know theirs)

    def __post_init__(self) -> None:
        names = self.datasets
        if not names:
            raise ValueError("dataset: expected a dataset name or a non-empty list of them")
        for i, name in enumerate(names):
            if not name:
                raise ValueError(f"dataset[{i}]: empty name")
            if names.index(name) != i:
                raise ValueError(f"dataset[{i}]: {name!r} is listed twice")
        if self.instrument and len(names) > 1:
            raise ValueError("instrument: names the instrument of one dataset; a list takes each dataset's own")

    @property
    def datasets(self) -> tuple[str, ...]:
        """The dataset names, one or many."""
        return (self.dataset,) if isinstance(self.dataset, str) else tuple(self.dataset)

    @property
    def name(self) -> str:
        """The datasets as one name, for messages and default output folders: "goog_1d+sp500_1d"."""
        return "+".join(Path(n).stem for n in self.datasets)


class TrainConfig(_Section):
    """Deep-supervision training (dualhrq.train.loop). One step = one ACT segment of a batch = one optimizer step."""

    steps: PosInt = 300
    batch_size: PosInt = 32  # global: split evenly over data-parallel ranks
    lr: PosFloat = 3e-4
    q_head_lr_scale: PosFloat = 1.0  # the Q-head's lr multiple (short runs need > 1 to learn halting)
    min_lr_ratio: Prob = 0.1  # cosine decay ends at lr * min_lr_ratio
    beta1: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.95  # as the reference HRM
    weight_decay: NonNegFloat = 0.1
    warmup_steps: NonNegInt = 20
    grad_clip: PosFloat = 1.0
    seed: int = 0
    checkpoint_every: PosInt = 100
    keep_checkpoints: PosInt = 3  # older step directories are removed
    log_every: PosInt = 10
    evaluate: bool = True  # score the whole validation slice and held-out tail at each checkpoint
    val_fraction: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.15  # tail of the training window, purged
    # from the rest, that picks the best checkpoint and fits the decision rule (never the held-out tail)
    keep_best: bool = True  # `best` points at the checkpoint with the lowest validation cross-entropy
    patience: NonNegInt = 4  # stop after this many evaluations without a better validation CE (0: never)
    class_weights: Literal["none", "sqrt", "inverse"] = "none"  # policy CE weights from label frequencies
    grad_norm_every: NonNegInt = 100  # log each loss term's gradient norm every this many steps (0: never)
    out_dir: str = "runs/train"
    pattern_dropout: Prob = 0.25  # drop the whole pattern context so the regime-only path stays calibrated
    device: Literal["auto", "cpu", "cuda"] = "auto"
    loss_weights: dict[str, NonNegFloat] = msgspec.field(default_factory=dict)  # see dualhrq.train.losses


class FaultConfig(_Section):
    """Deliberate index faults for drills: every query sleeps delay_ms, error_rate of them raise."""

    delay_ms: NonNegFloat = 0.0
    error_rate: Prob = 0.0


class PatternsConfig(_Section):
    """The pattern library (hnswlib), its fixed encoder, and retrieval that fails open (dualhrq.patterns)."""

    enabled: bool = True
    space: Literal["l2", "cosine", "ip"] = "l2"
    m: PosInt = 16
    ef_construction: PosInt = 200
    ef: PosInt = 64
    max_elements: PosInt = 200_000
    window: PosInt = 24  # fine bars summarised by one pattern
    embed_dim: PosInt = 16  # E: PCA components kept by the pattern encoder
    expiry_days: NonNegFloat = 0.0  # 0: entries never expire
    initial_quality: Prob = 0.5  # no evidence yet: a coin flip on the direction
    quality_alpha: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.1  # weight of one realised outcome
    quality_floor: Prob = 0.2  # entries whose quality falls below retire
    timeout_ms: PosFloat = 2.0
    pool_size: PosInt = 2
    fault: FaultConfig = FaultConfig()


class ExecutionConfig(_Section):
    """How validation fills positions and what the fills cost (dualhrq.evaluate.execution).

    The defaults are the optimistic fill: at the close of the bar that produced the signal, no spread, no impact,
    and a fee of half of ``data.cost_bps`` (a round trip) per unit of position change.
    """

    fill: Literal["close", "next_open"] = "close"  # the signal bar's close, or the next bar's open
    delay_bars: NonNegInt = 0  # bars between the signal and the fill (latency, batch execution)
    spread: Literal["fixed", "high_low"] = "fixed"  # half-spread: half_spread_bps, or estimated from highs and lows
    half_spread_bps: NonNegFloat = 0.0  # spread: fixed; paid on every unit traded
    spread_window: Annotated[int, msgspec.Meta(ge=2)] = 20  # bars averaged by the high/low spread estimate
    fee_bps: NonNegFloat | None = None  # per side, per unit traded; None: half of data.cost_bps
    impact_coef: NonNegFloat = 0.0  # Y of the square-root impact Y * sigma * sqrt(order / volume); 0: none
    vol_window: Annotated[int, msgspec.Meta(ge=2)] = 20  # bars of the per-bar volatility sigma of the impact
    order_size: PosFloat = 1.0  # instrument units (those of the bars' volume) per unit of position
    # At most this share of a bar's volume fills; the rest of the order waits for the next bars. None: no cap.
    participation_cap: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None


class ValidateConfig(_Section):
    """Walk-forward / CPCV validation (dualhrq.evaluate.validate). Windows count samples (one per fine bar).

    The defaults suit daily bars (trading days: train 252, test and step 21, purge 14, embargo 7); hourly
    configs override them. Every model setting here is fixed before a run: nothing is tuned on the test windows.
    """

    scheme: Literal["walk_forward", "cpcv"] = "walk_forward"
    train_bars: PosInt = 252
    test_bars: PosInt = 21
    step_bars: PosInt = 21
    purge_bars: NonNegInt = 14  # fixed gap before each test block, on top of the label-interval purge
    embargo_bars: NonNegInt = 7  # samples after each test block kept out of training
    anchored: bool = False  # True: every training window starts at the first sample
    continue_from_previous: bool = True  # walk-forward: fit each split from the previous split's state
    cpcv_groups: Annotated[int, msgspec.Meta(ge=2)] = 6
    cpcv_test_groups: PosInt = 2
    periods_per_year: NonNegFloat = 0.0  # 0: inferred from the sample times
    momentum_lookback: PosInt = 20  # samples summed by the momentum-sign baseline
    ridge_alpha: PosFloat = 1.0
    logistic_c: PosFloat = 1.0
    bootstrap_reps: PosInt = 1000
    bootstrap_block: NonNegInt = 0  # stationary-bootstrap mean block length; 0: arch's default (sqrt(T))
    extra_trials: NonNegInt = 0  # configurations tried before this run, counted by the Deflated Sharpe Ratio
    leak_lags: list[PosInt] = msgspec.field(default_factory=lambda: [1, 5, 10, 20])
    leak_max_corr: Prob = 0.3  # |rank correlation| with a future return above this is a leak, not skill
    truncation_cuts: PosInt = 5
    permuted_control_splits: NonNegInt = 3  # splits re-run on permuted labels; 0 turns the control off
    seed: int = 0
    out_dir: str = "runs/validate"
    execution: ExecutionConfig = ExecutionConfig()
    pbo_blocks: Annotated[int, msgspec.Meta(ge=2, le=20, multiple_of=2)] = 16  # CSCV blocks of the PBO

    def __post_init__(self) -> None:
        if self.cpcv_test_groups >= self.cpcv_groups:
            raise ValueError("cpcv_test_groups must be smaller than cpcv_groups")
        if self.step_bars < self.test_bars:
            raise ValueError("step_bars must be >= test_bars (overlapping test windows would count samples twice)")


# Validate settings that change no prediction: editing them keeps finished splits, and they are no new trial.
VALIDATE_REPORTING_ONLY = frozenset({
    "bootstrap_reps", "bootstrap_block", "extra_trials", "leak_lags", "leak_max_corr", "truncation_cuts",
    "permuted_control_splits", "periods_per_year", "out_dir", "execution", "pbo_blocks"})


class TrackingConfig(_Section):
    """The run ledger that every `train` and `validate` appends to (dualhrq.evaluate.ledger), and an optional
    MLflow mirror of the runs (dualhrq.evaluate.tracking; the `mlflow` extra)."""

    ledger: str = ""  # SQLite file; "": ledger.sqlite in the runs directory (the parent of the run's directory)
    mlflow: bool = False
    mlflow_uri: str = ""  # "": MLflow's own default (MLFLOW_TRACKING_URI, else ./mlruns)
    experiment: Annotated[str, msgspec.Meta(min_length=1)] = "dualhrq"


# ---------------------------------------------------------------- serving


class CurveConfig(_Section):
    server_secret_key_file: str = ""  # empty: CURVE off
    allowed_clients_dir: str = ""  # directory of client public key files
    admin_keys_dir: str = ""  # public keys that may send admin commands


class SessionsConfig(_Section):
    """Streams of `append` requests (dualhrq.runtime.streams): each open stream holds its window in memory."""

    max_streams: PosInt = 10_000  # beyond it the least recently used stream is dropped (its next append resyncs)
    idle_s: PosFloat = 900.0  # a stream without a request for this long expires
    # Between two consecutive fine bars of a stream, a spacing of at least this many bars is a market closure
    # (a night, a weekend); a shorter one that is more than one bar means a bar is missing: resync_required.
    closure_bars: Annotated[float, msgspec.Meta(ge=2.0)] = 3.0


class ServeConfig(_Section):
    bind: str = "tcp://127.0.0.1:5555"
    workers: PosInt = 1
    backend: Literal["onnx-cpu", "onnx-cuda", "onnx-tensorrt", "tensorrt", "torch", "torch-cuda"] = "onnx-cpu"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    intra_op_threads: NonNegInt = 0  # 0: all cores
    spinning: bool = False  # ORT threads spin between runs: on a few shared cores they starve the rest
    max_batch: PosInt = 8
    max_wait_us: NonNegInt = 200
    queue_max: PosInt = 256
    max_in_flight: PosInt = 4096  # requests received and unanswered; beyond it new ones get `overloaded`
    max_body_bytes: PosInt = 1_000_000
    default_deadline_ms: NonNegFloat = 0.0  # 0: no deadline unless the request gives one
    metrics_port: Port = 0  # 0: no Prometheus endpoint; workers > 1: the workers' own on the ports after it
    admin_tokens: list[str] = msgspec.field(default_factory=list)
    curve: CurveConfig = CurveConfig()
    drain_timeout_s: PosFloat = 5.0
    sessions: SessionsConfig = SessionsConfig()
    # A request alone in flight, with the engine idle, runs the engine on the event loop's thread: no hand-off to
    # the inference thread and back. The loop is busy for that run; requests arriving meanwhile wait in the socket.
    inline_engine: bool = True

    def __post_init__(self) -> None:
        problem = tcp_port_problem(self.bind)
        if problem:
            raise ValueError(f"bind: {problem}")


def tcp_port_problem(address: str, following: int = 0) -> str | None:
    """Why the port of a ``tcp://HOST:PORT`` address (and the ``following`` ports after it, which the address
    implies too) cannot be used, or None. ZeroMQ itself takes a port number modulo 65536 (99999 listens on 34463,
    -1 on 65535), so a number out of range is refused here; ``*`` (any free port) and other transports pass, and
    a port that is no number at all is ZeroMQ's to refuse."""
    if not address.startswith("tcp://"):
        return None
    port = address.rpartition(":")[2]
    if not re.fullmatch(r"[-+]?[0-9]+", port):
        return None
    top = MAX_PORT - following
    low = 1 if following else 0  # 0: any free port (as `*`), but not with ports that follow it
    if not low <= int(port) <= top:
        return f"port {port} of {address!r} is out of range {low}-{top}"
    return None


class RiskConfig(_Section):
    """Risk limits, in the units of the model's quantity head (dualhrq.compliance.gate)."""

    max_position: PosFloat = 1.0  # |position| after any order that increases it
    max_order_quantity: PosFloat = 1.0  # every order, closes included
    max_notional: PosFloat = 1_000_000.0  # |position| x order price after any order that increases it


class ComplianceConfig(_Section):
    """The compliance gate (SSR, LULD, risk). ``enabled: false`` lets actions through unchanged; the admin
    kill switch still holds every action."""

    enabled: bool = True
    risk: RiskConfig = RiskConfig()
    # SQLite file the per-instrument state (SSR, LULD, positions) is written through to before each reply, so it
    # survives a restart; workers share it. None: in memory only (lost when the process ends).
    state_path: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    state_sync: Literal["normal", "full"] = "normal"  # SQLite synchronous: full also survives power loss


# ---------------------------------------------------------------- the whole file


class Config(_Section):
    model: ModelConfig
    act: ActConfig = ActConfig()
    budget: BudgetConfig = BudgetConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    patterns: PatternsConfig = PatternsConfig()
    validate: ValidateConfig = ValidateConfig()
    serve: ServeConfig = ServeConfig()
    compliance: ComplianceConfig = ComplianceConfig()
    tracking: TrackingConfig = TrackingConfig()


_PATH_RE = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _readable(err: msgspec.ValidationError) -> tuple[str, str]:
    """Split msgspec's 'Expected `int` >= 64 - at `$.model.l_module.hidden_dim`' into (path, message)."""
    m = _PATH_RE.match(str(err))
    assert m is not None
    path = (m.group("path") or "").lstrip(".")
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    msg = m.group("msg").replace("`", "")
    msg = msg[0].lower() + msg[1:] if msg else msg
    if msg.startswith("object contains unknown field"):
        field = re.search(r"field (\S+)", msg)
        name = field.group(1).strip('"') if field else "?"
        path = f"{path}.{name}" if path else name
        msg = "unknown key"
    elif msg.startswith("object missing required field"):
        field = re.search(r"field (\S+)", msg)
        name = field.group(1).strip('"') if field else "?"
        path = f"{path}.{name}" if path else name
        msg = "missing required key"
    return path or "<root>", msg


def merge_sections(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid onto `base` key by key, recursing into nested mappings (what `base:` files and serve
    overlays mean by "override")."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_sections(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> list[Path]:
    """The configs that come with the package, by name."""
    return sorted(SHIPPED_CONFIGS.glob("*.yaml"))


def _shipped(name: str) -> Path | None:
    """The shipped config called `name` (with or without .yaml); None when it is a path or there is none."""
    if Path(name).parent != Path("."):
        return None
    for candidate in (SHIPPED_CONFIGS / name, SHIPPED_CONFIGS / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    return None


def resolve_config(path: str | Path) -> Path:
    """A config file: the path itself when it is a file, else the shipped config of that name."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = _shipped(str(p))
    if shipped is not None:
        return shipped
    names = ", ".join(c.stem for c in shipped_configs())
    raise ConfigurationError(f"{path}: config file not found (not a file, nor a shipped config: {names}; "
                             "`dualhrq config list` shows them)")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's floats: `lr: 1e-3` is a number (YAML 1.1 wants 1.0e-3 and reads
    1e-3 as a string, which the config would then refuse as not a float)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                              list("-+0123456789."))


def read_yaml(path: str | Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config file (a path, or a shipped config's name) as raw sections, with its `base:` chain merged
    in; not yet validated."""
    path = resolve_config(path) if not seen else Path(path)
    if not path.is_file():
        raise ConfigurationError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigurationError(f"{path}: base: circular reference")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as e:
        raise ConfigurationError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{path}: <root>: expected a mapping of sections")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigurationError(f"{path}: base: expected a path string")
    return merge_sections(read_yaml(_base_path(path, base), seen + (path.resolve(),)), raw)


def _base_path(path: Path, base: str) -> Path:
    """`base:` of the file at `path`: a file beside it, else (a bare name) the shipped config of that name, so
    that a user's file extends `train_eurusd` from any directory."""
    local = path.parent / base
    if local.is_file():
        return local
    shipped = _shipped(base)
    if shipped is not None:
        return shipped
    raise ConfigurationError(f"{path}: base: {local} is not a file, nor {base!r} a shipped config (`dualhrq config "
                             "list` shows them)")


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a plain mapping into a Config, raising ConfigurationError that names source and key path.

    Config files and serve overlays are all decoded here, so one rule holds for all their floats: finite, besides
    in range (a range check with only a lower bound lets infinity through, an unconstrained float NaN too)."""
    try:
        cfg = msgspec.convert(data, Config, strict=True)
    except msgspec.ValidationError as e:
        path, msg = _readable(e)
        raise ConfigurationError(f"{source}: {path}: {msg}") from None
    bad = _non_finite(cfg, "")
    if bad is not None:
        raise ConfigurationError(f"{source}: {bad[0]}: expected a finite number, got {bad[1]}")
    return cfg


def _non_finite(value: Any, path: str) -> tuple[str, float] | None:
    """The key path and value of the first NaN or infinity in a decoded config (sections, lists, mappings)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, msgspec.Struct):
        items: Any = ((name, getattr(value, name)) for name in value.__struct_fields__)
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def load_config(path: str | Path) -> Config:
    """Load and validate a YAML config file (following ``base:``)."""
    p = Path(path)
    return config_from_dict(read_yaml(p), str(path))


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain-JSON form of a config (for checkpoints and manifests); `config_from_dict` reads it back."""
    return msgspec.to_builtins(cfg)


# The sections a trained model's predictions depend on; validate (which splits, which baselines), serve,
# compliance, budget and tracking are not among them.
_PREDICTION_SECTIONS = ("model", "act", "data", "train", "patterns")
# Settings of those sections that change no prediction: where output goes, how often a run logs, what it runs
# on, and the pattern library's serving-time knobs (training and validation retrieve without a deadline).
_NOT_PREDICTIVE = {
    "train": frozenset({"out_dir", "log_every", "grad_norm_every", "device"}),
    "patterns": frozenset({"fault", "timeout_ms", "pool_size"}),
}


def prediction_settings(cfg: Config) -> dict[str, Any]:
    """The settings that change what a model trained from ``cfg`` predicts, as plain JSON. A key of a result
    built on such a model (a run ledger entry, a saved validation split, a split's model) adds what else the
    result depends on, e.g. the splits."""
    d = config_to_dict(cfg)
    return {s: {k: v for k, v in d[s].items() if k not in _NOT_PREDICTIVE.get(s, ())} for s in _PREDICTION_SECTIONS}
