"""The MLflow mirror of the run ledger (the optional ``mlflow`` extra; ``pip install 'dualhrq[mlflow]'``).

With ``--tracking mlflow[:URI]`` (or ``tracking.mlflow: true``) each `train` and `validate` run, once in the
ledger, also becomes an MLflow run: the ledger's columns as tags and parameters, its numeric metrics as
metrics, the config and the reports as artifacts. Without it nothing imports MLflow and nothing changes.

A URI that is a plain path or ``file:`` names a local file store; MLflow 3 keeps that backend only on request
(``MLFLOW_ALLOW_FILE_STORE``), which this module makes for the process when such a URI is given.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from dualhrq.config import Config, TrackingConfig
from dualhrq.errors import ConfigurationError
from dualhrq.evaluate.ledger import Ledger, RunRecord, Trial

_METRIC_NAME = re.compile(r"[^0-9A-Za-z_\-. /]")


def tracking_from_flag(tracking: TrackingConfig, flag: str | None) -> TrackingConfig:
    """The config's tracking section with ``--tracking mlflow[:URI]`` applied (None: unchanged)."""
    if flag is None:
        return tracking
    kind, _, uri = flag.partition(":")
    if kind != "mlflow":
        raise ConfigurationError(f"--tracking: expected mlflow or mlflow:URI, got {flag!r}")
    return msgspec.structs.replace(tracking, mlflow=True, mlflow_uri=uri or tracking.mlflow_uri)


def _uri(uri: str) -> str:
    if not uri:
        return ""
    if "://" not in uri and not uri.startswith(("file:", "sqlite:", "databricks")):
        uri = Path(uri).resolve().as_uri()
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def _flat(prefix: str, x: Any) -> Iterable[tuple[str, float]]:
    if isinstance(x, Mapping):
        for k, v in x.items():
            yield from _flat(f"{prefix}.{k}" if prefix else str(k), v)
    elif isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
        yield _METRIC_NAME.sub("_", prefix), float(x)


def mirror_run(tracking: TrackingConfig, record: RunRecord, cfg: Config, artifacts: Iterable[Path] = ()) -> str:
    """Log one ledger run to MLflow; returns the MLflow run id. A missing MLflow, an unreachable server or a
    store that refuses the run is a ConfigurationError naming --tracking."""
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise ConfigurationError("--tracking mlflow needs MLflow: pip install 'dualhrq[mlflow]'") from None
    uri = _uri(tracking.mlflow_uri)
    try:
        return _log_run(uri, tracking.experiment, record, cfg, artifacts)
    except (MlflowException, OSError) as e:  # MLflow wraps HTTP failures in MlflowException; a file store, OSError
        raise ConfigurationError(f"--tracking: MLflow at {uri or 'its default tracking URI'} failed: {e}") from None


def _log_run(uri: str, experiment_name: str, record: RunRecord, cfg: Config, artifacts: Iterable[Path]) -> str:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri or None)
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
    tags = {"dualhrq.kind": record.kind, "dualhrq.dataset": record.dataset, "dualhrq.ledger_run": str(record.run_id),
            "dualhrq.run_dir": record.run_dir}
    if record.verdict:
        tags["dualhrq.verdict"] = record.verdict[:5000]
    run = client.create_run(experiment_id, run_name=f"{record.kind} {Path(record.run_dir).name}", tags=tags)
    run_id = run.info.run_id
    stamp = int(record.created * 1000)
    params = [Param("config_hash", record.config_hash), Param("data_fingerprint", record.data_fingerprint),
              Param("seed", str(record.seed))]
    metrics = [Metric(k, v, stamp, 0) for k, v in _flat("", record.metrics)]
    for start in range(0, max(len(metrics), 1), 500):  # MLflow's batch limit is 1,000 metrics
        client.log_batch(run_id, metrics=metrics[start:start + 500], params=params if start == 0 else [])
    client.log_text(run_id, json.dumps(msgspec.to_builtins(cfg), indent=2), "config.json")
    for path in artifacts:
        if Path(path).is_file():
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id


def record_run(tracking: TrackingConfig, ledger: Ledger, record: RunRecord, cfg: Config, trials: Sequence[Trial] = (),
               artifacts: Iterable[Path] = ()) -> RunRecord:
    """Append a finished run to the ledger and, when tracking asks for it, mirror it to MLflow (a failed mirror
    is a ConfigurationError that says the ledger holds the run)."""
    record = ledger.append(record, trials)
    if tracking.mlflow:
        try:
            mirror_run(tracking, record, cfg, artifacts)
        except ConfigurationError as e:
            raise ConfigurationError(f"{e} (the run ledger {ledger.path} has the run already, as run "
                                     f"{record.run_id}; its MLflow copy is missing or incomplete)") from None
    return record
