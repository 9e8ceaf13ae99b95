"""The HRM training loop: deep supervision over ACT segments, the one-step gradient, AdamW, checkpoints, resume.

One training step = one segment on every slot of the batch (see dualhrq.train.act) = one optimizer step, as in
the reference HRM: the carry is detached between segments, so each segment is its own supervised step, and
inside a segment the model's forward already keeps grad only for the last L and H updates (the one-step
gradient). After the segment, a second forward from the new carry (without grad) gives the Q-continue target.

Bit-exact resume on CPU: the model, AdamW and the schedule come back from the checkpoint, the slots' carries
and samples from ``train_state.pt``, and every random draw of a step is keyed on (seed, step). A run of 2k steps
and a run stopped at k and resumed to 2k therefore end with identical weights.

Layout of ``out_dir``: ``metrics.jsonl`` (one JSON line per log interval and per evaluation), ``latest`` (name
of the newest checkpoint), ``best`` (the checkpoint with the lowest cross-entropy on the validation slice) and
``checkpoints/step_NNNNNNN/`` (model.safetensors + checkpoint.json from dualhrq.train.checkpoint,
``train_state.pt``, and the pattern library in ``patterns/``), and ``finished`` (the step the last run ended
at: its schedule's end, or an early stop).

Evaluation (dualhrq.train.evaluation) scores the WHOLE validation slice (the purged tail of the training
window: it picks the best checkpoint) and the whole held-out tail (reported, never used to choose anything).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch
from tqdm import tqdm

from dualhrq.config import ActConfig, Config
from dualhrq.errors import ConfigurationError, ConvergenceError, ModelLoadError
from dualhrq.inputs import InputPipeline
from dualhrq.model import HRM, Carry
from dualhrq.model.decision import DecisionRule, fit_rule
from dualhrq.seeding import seed_everything
from dualhrq.train.act import SlotState, halt_decision, q_continue_target
from dualhrq.train.batches import TrainingSet, draw_slots
from dualhrq.train.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from dualhrq.train.distributed import DistContext, init_distributed, shutdown, wrap_model
from dualhrq.train.evaluation import (
    HeldOut,
    LabelBaselines,
    baselines_by_instrument,
    predict,
    score,
    score_by_instrument,
    warn_if_collapsed,
)
from dualhrq.train.inputs import prepare_training
from dualhrq.train.losses import DEFAULT_LOSS_WEIGHTS, class_weights, loss_weights, policy_correct, segment_loss

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
LATEST_FILE = "latest"
BEST_FILE = "best"
FINISHED_FILE = "finished"  # the step a run stopped at, written when it ends (at its last step or early)
METRICS_FILE = "metrics.jsonl"
TERMS = tuple(DEFAULT_LOSS_WEIGHTS)
# Per-step sums reduced over ranks at each log interval: loss, the terms, then the ACT counters.
_COUNTERS = ("loss", *TERMS, "steps", "halted", "halted_correct", "halted_segments", "q_halt_correct", "slots")


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: HRM, cfg: Config) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (nanoGPT's rule: biases and norm gains are not shrunk), and the
    Q-head at ``train.q_head_lr_scale`` x lr: it starts at -5 (reference init) and Adam moves a logit about
    lr per step, so at the base lr a run of a few hundred steps would never let the Q-head leave its init."""
    t = cfg.train
    q_head = {id(p) for p in model.heads.q.parameters()}
    groups = []
    for is_q in (False, True):
        for matrix in (True, False):
            params = [p for p in model.parameters()
                      if p.requires_grad and (id(p) in q_head) == is_q and (p.dim() >= 2) == matrix]
            groups.append({"params": params, "lr": t.lr * (t.q_head_lr_scale if is_q else 1.0),
                           "weight_decay": t.weight_decay if matrix else 0.0})
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2))


@dataclass
class StepResult:
    """Local (this rank's) figures of one step, for the progress bar and the log accumulator."""

    loss: float
    terms: dict[str, float]
    grad_norm: float
    halted: int
    halted_correct: int
    halted_segments: int
    q_halt_correct: int
    slots: int
    term_grad_norms: dict[str, float] = field(default_factory=dict)  # weighted, on steps that measure them


@dataclass
class Trainer:
    """A training run in memory: model, optimizer, schedule, ACT slots and the step counter."""

    model: HRM
    cfg: Config
    data: TrainingSet
    total_steps: int
    ctx: DistContext = field(default_factory=lambda: DistContext(0, 1, torch.device("cpu")))
    step: int = 0

    def __post_init__(self) -> None:
        self.model.to(self.ctx.device).train()
        self.data = self.data.to(self.ctx.device)
        self.ddp = wrap_model(self.model, self.ctx)
        self.optimizer = make_optimizer(self.model, self.cfg)
        t = self.cfg.train
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, partial(lr_factor, warmup=t.warmup_steps, total=self.total_steps, min_ratio=t.min_lr_ratio))
        self.shard = self.ctx.shard(t.batch_size)
        self.slots = SlotState.start(self.model, self.shard.stop - self.shard.start, self.ctx.device)
        self.weights = loss_weights(t)
        weights = class_weights(self.data.targets.action, t.class_weights)
        self.policy_weights = None if weights is None else weights.to(self.ctx.device)

    # ------------------------------------------------------------ one step

    def train_step(self) -> StepResult:
        t, act, dev = self.cfg.train, self.cfg.act, self.ctx.device
        draws = draw_slots(t, act, self.step, len(self.data), self.shard)
        slots = self.slots.admit(draws.sample.to(dev), draws.drop_patterns.to(dev))
        x, y = self.data.batch(slots.sample, slots.drop_patterns)
        carry, out = self.ddp(x, slots.carry)
        steps = slots.steps + 1
        with torch.no_grad():
            halted, is_last = halt_decision(out.q_logits, steps, act, draws.explore_min.to(dev))
            # The next segment from the new carry, only for its Q values (reference: no target network).
            _, nxt = self.model(x, carry.detach())
            target = q_continue_target(nxt.q_logits, is_last)
        loss, attached = segment_loss(out, y, target, self.weights, self.policy_weights)
        terms = {k: v.detach() for k, v in attached.items()}
        every = t.grad_norm_every
        term_norms = self.term_grad_norms(attached) if every and self.step % every == 0 else {}
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        if not torch.isfinite(grad_norm):  # gradients are rank-averaged: every rank stops at the same step
            raise ConvergenceError(f"step {self.step}: non-finite gradient norm (loss {loss.item():.4g}); "
                                   "lower train.lr or raise train.warmup_steps")
        self.optimizer.step()
        self.scheduler.step()
        self.slots = SlotState(Carry(carry.z_H.detach(), carry.z_L.detach()), steps, halted, slots.sample,
                               slots.drop_patterns)
        self.step += 1
        with torch.no_grad():
            correct = policy_correct(out, y)
            q_halt_right = (out.q_logits[:, 0] >= 0) == correct
            # One device-to-host copy for all figures (each .item() would synchronise a GPU).
            figures = torch.stack([loss.detach(), *terms.values(), grad_norm, halted.sum(), (halted & correct).sum(),
                                   steps[halted].sum(), (halted & q_halt_right).sum()]).tolist()
        n = len(terms)
        return StepResult(figures[0], dict(zip(terms, figures[1:n + 1])), figures[n + 1],
                          *(int(v) for v in figures[n + 2:]), len(halted), term_norms)

    def term_grad_norms(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """Each weighted loss term's gradient norm over all parameters (this rank's, before clipping): which
        term the shared backbone actually follows."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        norms = {}
        for k, v in terms.items():
            grads = torch.autograd.grad(self.weights[k] * v, params, retain_graph=True, allow_unused=True)
            norms[k] = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
        return norms

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything beyond the weights that resume needs, loadable with torch.load(weights_only=True)."""
        return {"step": self.step, "total_steps": self.total_steps, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "slots": self.slots.state_dict(),
                "world_size": self.ctx.world_size, "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["world_size"] != self.ctx.world_size:
            raise ModelLoadError(f"checkpoint was trained on {state['world_size']} process(es); resume it on as "
                                 f"many (this run has {self.ctx.world_size})")
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.slots = SlotState.from_state_dict(state["slots"], self.ctx.device)
        torch.set_rng_state(state["torch_rng"])


# ---------------------------------------------------------------- evaluation


@dataclass
class EvalSets:
    """What each evaluation scores: the validation slice (model selection) and the held-out tail (report)."""

    val: TrainingSet
    test: TrainingSet | None  # None: nothing held out beyond the validation slice (a validation split)
    baselines: LabelBaselines  # label frequencies of the training samples, overall and per position state
    train_labels: tuple[np.ndarray, np.ndarray, np.ndarray]  # (action, state, forward return) of training
    instruments: tuple[str, ...] = ()  # instrument id i + 1's name: the held-out tail is also scored by each
    instrument_baselines: dict[int, LabelBaselines] = field(default_factory=dict)  # by instrument id

    @classmethod
    def of(cls, train: TrainingSet, val: TrainingSet, test: TrainingSet | None,
           instruments: Sequence[str] = ()) -> EvalSets:
        y = train.targets
        return cls(val, test, LabelBaselines.fit(y.action.numpy(), y.state.numpy()), _labels(train),
                   tuple(instruments), baselines_by_instrument(train) if len(instruments) > 1 else {})

    def rule_and_reports(self, model: HRM, act: ActConfig) -> Reports:
        """The decision rule fitted on the validation slice, and both slices' figures under it."""
        val_out = predict(model, act, self.val)
        rule = fit_rule(self.train_labels, val_out["policy_logits"].numpy(), _labels(self.val),
                        float(self.val.targets.cost[0]), f"validation slice: {len(self.val)} samples")
        test, by_instrument = None, {}
        if self.test is not None:
            test_out = predict(model, act, self.test)
            test = score(test_out, self.test, self.baselines, rule)
            by_instrument = score_by_instrument(test_out, self.test, self.instrument_baselines, rule,
                                                self.instruments)
        return Reports(rule, score(val_out, self.val, self.baselines, rule), test, by_instrument)


@dataclass(frozen=True)
class Reports:
    """One evaluation: the rule fitted on the validation slice, its figures there and on the held-out tail
    (pooled, and per instrument when there are several)."""

    rule: DecisionRule
    val: HeldOut
    test: HeldOut | None
    test_by_instrument: dict[str, HeldOut]

    def scores(self) -> dict[str, Any]:
        """The figures as metrics.jsonl records them: val_*, test_*, test_by_instrument.{name}.*"""
        out = {**self.val.to_dict("val_"), **(self.test.to_dict("test_") if self.test else {})}
        if self.test_by_instrument:
            out["test_by_instrument"] = {name: r.to_dict() for name, r in self.test_by_instrument.items()}
        return out


def _labels(data: TrainingSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = data.targets
    return y.action.numpy(), y.state.numpy(), y.action_return.double().numpy()


# ---------------------------------------------------------------- checkpoints


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or None."""
    return _pointed(Path(out_dir), LATEST_FILE)


def finished_at(out_dir: str | Path) -> int | None:
    """The step a run directory's last run ended at (its schedule's end, or an early stop), or None."""
    path = Path(out_dir) / FINISHED_FILE
    return int(path.read_text()) if path.is_file() else None


def best_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint with the lowest validation cross-entropy (else the newest), or None."""
    return _pointed(Path(out_dir), BEST_FILE) or latest_checkpoint(out_dir)


def _pointed(out_dir: Path, pointer_name: str) -> Path | None:
    pointer = out_dir / pointer_name
    if not pointer.is_file():
        return None
    return out_dir / "checkpoints" / pointer.read_text().strip()


def _point(out_dir: Path, pointer_name: str, target: Path) -> None:
    tmp = out_dir / (pointer_name + ".tmp")
    tmp.write_text(target.name)
    tmp.replace(out_dir / pointer_name)  # the pointer moves only once the checkpoint is complete


def write_checkpoint(trainer: Trainer, out_dir: Path, metrics: dict[str, Any], inputs: InputPipeline | None = None,
                     val_cross_entropy: float | None = None, is_best: bool = False) -> Path:
    """Write checkpoints/step_NNNNNNN (weights, JSON, train_state.pt, the input pipeline), then move ``latest``
    (and with ``is_best`` ``best``) to it and drop all but the newest ``train.keep_checkpoints`` and the best."""
    root = out_dir / "checkpoints"
    d = root / f"step_{trainer.step:07d}"
    save_checkpoint(d, trainer.model, trainer.cfg, trainer.step, metrics, val_cross_entropy)
    torch.save(trainer.state_dict(), d / STATE_FILE)
    if inputs is not None:
        inputs.save(d)
    _point(out_dir, LATEST_FILE, d)
    if is_best:
        _point(out_dir, BEST_FILE, d)
    best = _pointed(out_dir, BEST_FILE)
    for old in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))[
            :-trainer.cfg.train.keep_checkpoints]:
        if best is None or old.name != best.name:
            shutil.rmtree(old)
    return d


def load_train_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_FILE
    if not path.is_file():
        raise ModelLoadError(f"{directory}: missing {STATE_FILE}; this checkpoint cannot be resumed")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # several types; torch's own message advises weights_only=False, which runs what the file holds
        raise _not_a_train_state(path) from None
    if not isinstance(state, dict) or not _STATE_KEYS <= state.keys():
        raise _not_a_train_state(path)
    return state


_STATE_KEYS = frozenset({"total_steps", "world_size", "step", "optimizer", "scheduler", "slots", "torch_rng"})


def _not_a_train_state(path: Path) -> ModelLoadError:
    return ModelLoadError(f"{path}: not a train state written by dualhrq train (or corrupted); this checkpoint "
                          "cannot be resumed")


# ---------------------------------------------------------------- the run


class _LogWindow:
    """Sums of step figures over one log interval, reduced over ranks when written."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(_COUNTERS, 0.0)
        self.term_norms: dict[str, float] = {}  # the latest measured in the window (rank 0's)
        self.started = time.perf_counter()

    def add(self, r: StepResult) -> None:
        s = self.sums
        s["loss"] += r.loss
        for k, v in r.terms.items():
            s[k] += v
        s["steps"] += 1
        for k in ("halted", "halted_correct", "halted_segments", "q_halt_correct", "slots"):
            s[k] += getattr(r, k)
        self.term_norms = r.term_grad_norms or self.term_norms

    def record(self, ctx: DistContext, step: int, lr: float, grad_norm: float) -> dict[str, Any]:
        vec = ctx.sum(torch.tensor([self.sums[k] for k in _COUNTERS], dtype=torch.float64))
        s = dict(zip(_COUNTERS, vec.tolist()))
        n = max(s["steps"], 1.0)  # sums of per-rank means: divide by steps x ranks
        rec: dict[str, Any] = {"step": step, "lr": lr, "loss": s["loss"] / n}
        rec.update({k: s[k] / n for k in TERMS})
        halted = s["halted"]
        # Of the training samples finished in the window: a training figure, never a held-out one.
        rec["train_accuracy"] = s["halted_correct"] / halted if halted else None
        rec["q_halt_accuracy"] = s["q_halt_correct"] / halted if halted else None
        rec["segments"] = s["halted_segments"] / halted if halted else None
        rec["halted_fraction"] = halted / max(s["slots"], 1.0)  # share of slots finishing a sample per step
        rec["grad_norm"] = grad_norm
        rec.update({f"grad_norm_{k}": v for k, v in self.term_norms.items()})
        rec["sec_per_step"] = (time.perf_counter() - self.started) / max(s["steps"] / ctx.world_size, 1.0)
        return rec


@dataclass
class RunResult:
    out_dir: Path
    step: int
    checkpoint: Path | None  # the last written
    history: list[dict[str, Any]]
    config: Config  # the config the run trained with: a resumed run's is its checkpoint's, not the caller's
    best: Path | None = None  # lowest validation cross-entropy (None without evaluation)
    best_val: HeldOut | None = None  # the best checkpoint's figures on the validation slice
    best_test: HeldOut | None = None  # and on the held-out tail
    best_rule: DecisionRule | None = None  # the decision rule fitted for the best checkpoint
    best_test_by_instrument: dict[str, HeldOut] = field(default_factory=dict)  # several instruments: each's


def run(trainer: Trainer, until: int, out_dir: Path | None = None, *, inputs: InputPipeline | None = None,
        eval_sets: EvalSets | None = None, progress: bool = True) -> RunResult:
    """Train from ``trainer.step`` up to step ``until``, logging to ``out_dir/metrics.jsonl`` and writing a
    checkpoint every ``train.checkpoint_every`` steps and at the end (rank 0 only; no files when out_dir is
    None). With ``eval_sets`` each checkpoint is scored on the whole validation slice and held-out tail, and
    ``best`` follows the lowest validation cross-entropy."""
    t = trainer.cfg.train
    ctx = trainer.ctx
    main = ctx.is_main and out_dir is not None
    history: list[dict[str, Any]] = []
    checkpoint: Path | None = None
    result = RunResult(out_dir or Path(), trainer.step, None, history, trainer.cfg)
    best_ce = _best_so_far(out_dir) if out_dir is not None else math.inf
    stale = 0  # evaluations since the best
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=until, initial=trainer.step, desc="train", unit="step", disable=not (progress and ctx.is_main),
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 10.0)  # readable CI logs
    window = _LogWindow()
    acc_num = acc_den = 0
    loss_ema: float | None = None
    try:
        while trainer.step < until:
            r = trainer.train_step()
            window.add(r)
            loss_ema = r.loss if loss_ema is None else 0.9 * loss_ema + 0.1 * r.loss
            acc_num, acc_den = acc_num + r.halted_correct, acc_den + r.halted
            bar.update(1)
            # refresh=False: the bar redraws at its own mininterval (a forced redraw per step floods CI logs)
            bar.set_postfix(loss=f"{loss_ema:.4f}", train_acc=f"{acc_num / acc_den:.3f}" if acc_den else "-",
                            refresh=False)
            last = trainer.step == until
            if trainer.step % t.log_every == 0 or last:
                rec = window.record(ctx, trainer.step, trainer.scheduler.get_last_lr()[0], r.grad_norm)
                history.append(rec)
                if main:
                    _append_jsonl(out_dir / METRICS_FILE, rec)
                window, acc_num, acc_den = _LogWindow(), 0, 0
            if main and (trainer.step % t.checkpoint_every == 0 or last):
                metrics = dict(history[-1]) if history else {}
                # A rule belongs to the weights it was fitted for: a resumed run's inputs carry the old one.
                ckpt_inputs = inputs.with_rule(None) if inputs is not None else None
                is_best, improved, reports, val_ce = False, False, None, None
                if eval_sets is not None and t.evaluate and len(eval_sets.val):
                    reports = eval_sets.rule_and_reports(trainer.model, trainer.cfg.act)
                    ckpt_inputs = inputs.with_rule(reports.rule) if inputs is not None else None
                    val_ce = reports.val.cross_entropy
                    scores = reports.scores()
                    metrics.update({k: v for k, v in scores.items() if k != "test_by_instrument"})
                    _append_jsonl(out_dir / METRICS_FILE, {"step": trainer.step, "eval": True, **scores})
                    improved = reports.val.cross_entropy < best_ce
                    is_best = t.keep_best and improved
                    log.info("step %d: validation CE %.4f (state-only %.4f), non-HOLD %.1f%%%s", trainer.step,
                             reports.val.cross_entropy, reports.val.state_ce, 100 * reports.val.non_hold_share,
                             "  [best]" if is_best else "")
                checkpoint = write_checkpoint(trainer, out_dir, metrics, ckpt_inputs, val_ce, is_best)
                if improved and reports is not None:
                    best_ce = reports.val.cross_entropy
                    if is_best:
                        result.best, result.best_val, result.best_test = checkpoint, reports.val, reports.test
                        result.best_rule, result.best_test_by_instrument = reports.rule, reports.test_by_instrument
                stale = 0 if improved or reports is None else stale + 1
                # One process only: the other ranks of a data-parallel run do not evaluate, so they cannot stop.
                if t.patience and stale >= t.patience and not last and ctx.world_size == 1:
                    log.info("step %d: no better validation CE in %d evaluations; stopping early (train.patience), "
                             "best is %s", trainer.step, stale, result.best.name if result.best else "-")
                    break
    finally:
        bar.close()
    result.step, result.checkpoint = trainer.step, checkpoint
    if main and checkpoint is not None:
        (out_dir / FINISHED_FILE).write_text(f"{trainer.step}\n")
    if result.best_test is not None:
        warn_if_collapsed(result.best_test, f"held-out tail, best checkpoint {result.best.name}")
    return result


def _best_so_far(out_dir: Path) -> float:
    """The validation CE of the run's current best checkpoint (a resumed run keeps improving on it)."""
    best = _pointed(out_dir, BEST_FILE)
    if best is None or not best.is_dir():
        return math.inf
    try:
        ce = read_checkpoint_meta(best).val_cross_entropy
    except ModelLoadError as e:  # e.g. a run of an older dualhrq in the same directory: nothing to compare with
        log.warning("%s: not comparable, the first evaluation of this run becomes the best (%s)", best, e)
        return math.inf
    return math.inf if ce is None else ce


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def resume_trainer(directory: Path, data: TrainingSet, ctx: DistContext, total_steps: int | None = None) -> Trainer:
    """A Trainer restored from a checkpoint directory (weights, optimizer, schedule, slots, step)."""
    model, meta = load_checkpoint(directory, ctx.device)
    state = load_train_state(directory)
    # A new total length changes the schedule from here on; the step counter and everything else carry on.
    trainer = Trainer(model, meta.config, data, total_steps or int(state["total_steps"]), ctx)
    trainer.load_state_dict(state)
    return trainer


def new_trainer(cfg: Config, data: TrainingSet, ctx: DistContext, total_steps: int,
                model: HRM | None = None) -> Trainer:
    """A fresh run (new optimizer and schedule, step 0) of a new model, or of ``model``'s weights (walk-forward
    continues from the previous split's); everything is seeded from train.seed."""
    seed_everything(cfg.train.seed)
    return Trainer(model or HRM(cfg.model), cfg, data, total_steps, ctx)


def config_differences(a: Config, b: Config) -> list[str]:
    """Top-level keys under which two configs differ (a resumed run reports what it ignores)."""
    da, db = msgspec.to_builtins(a), msgspec.to_builtins(b)
    return [f"{s}.{k}" for s in da for k in da[s] if da[s][k] != db[s].get(k)]


def train(cfg: Config, out_dir: str | Path | None = None, *, steps: int | None = None, resume: bool = False,
          stop_at: int | None = None, progress: bool = True) -> RunResult:
    """`dualhrq train`: prepare the inputs, then train for ``steps`` (default train.steps), optionally stopping
    early at ``stop_at`` (a later --resume continues), under torchrun when launched by it."""
    ctx = init_distributed(cfg.train.device)
    try:
        out = Path(out_dir or cfg.train.out_dir)
        if out.exists() and not out.is_dir():
            raise ConfigurationError(f"--out: {out} is a file, not a run directory (train.out_dir)")
        latest = latest_checkpoint(out)
        if resume and latest is None:
            raise ModelLoadError(f"{out}: nothing to resume (no {LATEST_FILE} checkpoint pointer)")
        if not resume and latest is not None:
            # A fresh run there would mix with the old one: its checkpoints, its best pointer, its metrics log.
            raise ConfigurationError(f"--out: {out} holds a run already (latest {latest.name}); "
                                     "--resume continues it, or choose another --out, or remove it")
        if latest is not None:
            meta_cfg = read_checkpoint_meta(latest).config
            changed = config_differences(meta_cfg, cfg)
            if changed:
                log.warning("resuming with the checkpoint's config; the given config differs in %s",
                            ", ".join(changed))
            prepared = prepare_training(meta_cfg, InputPipeline.load(latest, meta_cfg))
            trainer = resume_trainer(latest, prepared.train, ctx, steps)
            log.info("resumed %s at step %d of %d", latest, trainer.step, trainer.total_steps)
        else:
            prepared = prepare_training(cfg)
            trainer = new_trainer(cfg, prepared.train, ctx, steps or cfg.train.steps)
        until = min(stop_at or trainer.total_steps, trainer.total_steps)
        if until <= trainer.step:
            raise ConfigurationError(f"nothing to train: the run is at step {trainer.step} and would stop at {until} "
                                     "(raise --steps or --stop-at)")
        eval_sets = EvalSets.of(prepared.train, prepared.val, prepared.test, prepared.inputs.instruments.names())
        return run(trainer, until, out, inputs=prepared.inputs, eval_sets=eval_sets, progress=progress)
    finally:
        shutdown(ctx)
