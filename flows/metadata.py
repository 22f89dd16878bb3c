"""Keys of the Parquet schema metadata that xent writes and reads, xent's version, and
the nightly history's columns: the names every layer shares, importing nothing of xent.

Reports carry all the keys; a dump (generated or not) may carry ``CLASSES_KEY``.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

try:
    VERSION = version("xent")
except PackageNotFoundError:  # running from a source tree that was not installed
    VERSION = "0+unknown"

VERSION_KEY = b"xent.version"  # the xent version that wrote the report
CREATED_AT_KEY = b"xent.created_at"  # ISO 8601, UTC
UNITS_KEY = b"xent.units"  # "nats" or "bits"
EPS_KEY = b"xent.eps"  # JSON: the probability clip, or null
CONFIG_KEY = b"xent.config"  # JSON: the resolved config, credentials redacted
FINGERPRINT_KEY = b"xent.fingerprint"  # JSON: the input files' identity
REFERENCE_FINGERPRINT_KEY = b"xent.reference_fingerprint"  # JSON: a drift report's reference input
CLASSES_KEY = b"xent.classes"  # JSON list of class names in index order
LAYOUT_KEY = b"xent.layout"  # JSON: kind, layout and prediction columns read
INTEGRITY_KEY = b"xent.integrity"  # JSON: input files, and how many had their page checksums verified
INTERVALS_KEY = b"xent.intervals"  # JSON: method, level, n_buckets and bucket_key of the _lo/_hi columns
RUN_DIGEST_KEY = b"xent.run_digest"  # a nightly run's digest of its config and inputs
COMPARE_KEY = b"xent.compare"  # JSON: a comparison's join key and counts, buckets, level and tie tolerance
GATE_KEY = b"xent.gate"  # JSON: a nightly run's gate verdict against its baseline run
NIGHTLY_KEY = b"xent.nightly"  # JSON: a nightly run's source, run_date, report_root and tables_root
WARNINGS_KEY = b"xent.warnings"  # JSON list of the run's warnings, each {"id", "text", ...}; [] when none
HISTORY_KEY = b"xent.history"  # JSON: a history read of the latest run dates only: {"dates_left_out": earlier dates}

# The nightly history (metrics.parquet under REPORT_ROOT, see flows.runs.nightly): its
# partition keys, and the columns of each file besides the run's slice columns (which
# come right after `scope`), with their Arrow types (flows.report.tables.METRIC_FIELDS).
PARTITION_KEYS = ("run_date", "source")
METRIC_COLUMNS = {
    "overall": "bool_",
    "class": "int32",
    "class_name": "string",
    "metric": "string",
    "value": "float64",
    "lo": "float64",  # the metric's interval (its <metric>_lo/_hi columns); null without one
    "hi": "float64",
    "n": "int64",
    "small_slice": "bool_",  # the row's slice has fewer rows than min_slice_size
    "threshold": "float64",  # drift: the threshold; gate: the signed limit of the difference
    "breached": "bool_",
}
HISTORY_COLUMNS = (*PARTITION_KEYS, "scope", *METRIC_COLUMNS)  # all but the slice columns


def decoded_metadata(table: pa.Table) -> dict[str, Any]:
    """The ``xent.*`` schema metadata of `table`, keys as written, JSON values decoded
    (a value that is not JSON as text)."""
    decoded = {}
    for key, value in (table.schema.metadata or {}).items():
        if key.startswith(b"xent."):
            try:
                decoded[key.decode()] = json.loads(value)
            except ValueError:
                decoded[key.decode()] = value.decode()
    return decoded
