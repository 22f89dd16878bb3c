"""A nightly run's gates against a baseline run: the baseline's stored state, and the verdict."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

from xent_kernels import ClassStats

from ...config import EvalConfig, NightlyConfig, NightlySource
from ...errors import DataError
from ...inputs.sources import filesystem
from ...metadata import CLASSES_KEY, RUN_DIGEST_KEY
from ...monitor.baseline import comparable, gate_table
from ...monitor.gates import breached_gates, gate_rows
from ...report.state import STATE_KEY, STATE_TABLE, read_state
from .history import run_folder

STATE_FILE = f"{STATE_TABLE}.parquet"  # in the tables folder: a later run's gate baseline
GATE_TABLE = "gate"


@dataclass
class GateVerdict:
    """How a run's gates against its baseline run ended."""

    status: Literal["no baseline", "passed", "breached", "not comparable"]
    baseline: str | None = None  # the baseline's run date
    detail: str = ""  # why there is no baseline, or why it is not comparable
    breaches: list[str] = field(default_factory=list)  # one line per breached (gate, row)

    def text(self) -> str:
        against = f" against {self.baseline}" if self.baseline else ""
        if self.status == "breached":
            return f"gate{against}: {len(self.breaches)} breached"
        if self.status == "passed":
            return f"gates passed{against}"
        return f"gate: {self.status} ({self.detail})"

    def to_json(self) -> bytes:
        return json.dumps({"status": self.status, "baseline": self.baseline, "detail": self.detail,
                           "breaches": self.breaches}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "GateVerdict":
        return cls(**json.loads(raw))


@dataclass
class Baseline:
    """The baseline run of a source's gates: its date and stored state, or why there is none."""

    run_date: str | None
    detail: str = ""
    stats: ClassStats | None = None
    metadata: dict[bytes, bytes] = field(default_factory=dict)  # the state file's schema metadata

    @property
    def digest(self) -> str | None:
        return self.metadata[RUN_DIGEST_KEY].decode() if RUN_DIGEST_KEY in self.metadata else None


def load_baseline(config: NightlyConfig, source: NightlySource, run_date: str,
                  storage_options: dict[str, Any]) -> Baseline:
    """The state of the run `source`'s gates compare `run_date` with: the pinned date's,
    or ('previous') the latest earlier run date of the source with a stored state."""
    _, setting = config.gates(source)
    if setting == run_date:
        return Baseline(None, f"this run is the pinned baseline {setting}")
    if setting == "previous":
        fs, root = filesystem(config.tables_base, storage_options)
        found = fs.glob(f"{root.rstrip('/')}/run_date=*/source={source.name}/{STATE_FILE}")
        dates = sorted({m.group(1) for p in found if (m := re.search(r"run_date=(\d{4}-\d{2}-\d{2})/", p))})
        earlier = [day for day in dates if day < run_date]
        if not earlier:
            return Baseline(None, f"no earlier run of {source.name} with a stored {STATE_FILE} "
                                  f"under {config.tables_base}")
        setting = earlier[-1]
    folder = run_folder(config.tables_base, setting, source.name)
    try:
        stats, metadata = read_state(folder, storage_options)
    except FileNotFoundError:
        return Baseline(None, f"no stored state {folder}/{STATE_FILE}; run that date first")
    except pa.ArrowInvalid as error:
        raise DataError(f"{folder}/{STATE_FILE}: unreadable ({error}); re-run xent nightly for {setting}") from None
    return Baseline(setting, stats=stats, metadata=metadata)


def check_gates(gates: list, baseline: Baseline, stats: ClassStats, spec, config: EvalConfig
                ) -> tuple[GateVerdict, pa.Table | None]:
    """The gate verdict of a run's merged `stats` against `baseline`, and gate.parquet
    (None without a comparable baseline)."""
    if baseline.stats is None:
        return GateVerdict("no baseline", None, baseline.detail), None
    names = spec.names()
    stored = json.loads(baseline.metadata[STATE_KEY])
    problem = comparable(baseline.stats, stats,
                         json.loads(baseline.metadata[CLASSES_KEY]) if CLASSES_KEY in baseline.metadata else None,
                         names, stored["slice_by"], spec.slice_by)
    if problem:
        return GateVerdict("not comparable", baseline.run_date,
                           f"baseline run {baseline.run_date}: {problem}; set `baseline:` to a run date "
                           "made with this run's classes and slices"), None
    table = gate_table(baseline.stats, stats, tuple(spec.slice_by), tuple(spec.slice_types), names, config.units,
                       config.interval_level, config.min_slice_size)
    lines = breached_gates(gates, gate_rows(table, gates, spec.slice_by), spec.slice_by)
    return GateVerdict("breached" if lines else "passed", baseline.run_date, "", lines), table
