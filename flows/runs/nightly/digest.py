"""A nightly run's digest of what its report depends on, and the stored verdict of a run
already made from the same digest (the run is then skipped)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ...config import EvalConfig
from ...inputs.sources import InputFile, filesystem, fingerprint
from ...metadata import GATE_KEY, RUN_DIGEST_KEY
from .gates import GateVerdict
from .history import METRICS_FILE, breach_messages

# Part of every run digest: a history written in an older layout is rewritten, not skipped.
HISTORY_LAYOUT = 4


def run_digest(config: EvalConfig, inputs: list[InputFile], reference: list[str] | None,
               reference_inputs: list[InputFile] | None, drift: dict, gate: dict | None = None) -> str:
    """What a run's report depends on: settings, inputs, reference (or its absence), and
    with gates, the gates and the baseline run (its date and digest, or its absence)."""
    payload = {
        "layout": HISTORY_LAYOUT,
        "config": config.model_dump(mode="json"),
        "inputs": fingerprint(inputs)["digest"],
        "reference": fingerprint(reference_inputs)["digest"] if reference_inputs else {"missing": reference},
        "drift": drift,
    }
    if gate is not None:
        payload["gate"] = gate
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def stored_breaches(folder: str, digest: str, storage_options: dict[str, Any],
                    slice_by: Sequence[str]) -> "tuple[list[str], GateVerdict | None] | None":
    """The stored verdict (drift breach lines, maybe none, and the gate verdict) when the
    report in `folder` was made from the run `digest` describes; None when there is no
    such report."""
    fs, path = filesystem(f"{folder}/{METRICS_FILE}", storage_options)
    try:
        with fs.open(path, "rb") as handle:
            file = pq.ParquetFile(handle)
            if (file.schema_arrow.metadata or {}).get(RUN_DIGEST_KEY, b"").decode() != digest:
                return None
            metrics = file.read()
    except (FileNotFoundError, pa.ArrowInvalid):  # none yet, or unreadable: it is rewritten
        return None
    gate = (metrics.schema.metadata or {}).get(GATE_KEY)
    return breach_messages(metrics, slice_by), GateVerdict.from_json(gate) if gate else None
