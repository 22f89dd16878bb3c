"""xent_kernels: exact, fast cross-entropy, KL-divergence and entropy kernels.

Pure numerics (NumPy + Numba): nothing here imports Dask, Prefect or pyarrow.
"""

from ._checks import SUM_TOLERANCE, find_bad_label, find_invalid_row
from .intervals import DEFAULT_BUCKETS, DEFAULT_LEVEL
from .losses import binary_cross_entropy, cross_entropy, entropy, js_divergence, kl_divergence
from .statistics import (
    CELL_FIELDS,
    HIST_FIELDS,
    INFORMATION_COLUMNS,
    STATISTIC,
    STATISTICS,
    Statistic,
    class_columns,
    interval_columns,
    report_columns,
    summary_columns,
)
from .stats import ClassReport, ClassStats, class_stats_partial

__all__ = [
    "CELL_FIELDS",
    "HIST_FIELDS",
    "INFORMATION_COLUMNS",
    "STATISTIC",
    "STATISTICS",
    "Statistic",
    "class_columns",
    "interval_columns",
    "report_columns",
    "DEFAULT_BUCKETS",
    "DEFAULT_LEVEL",
    "summary_columns",
    "ClassReport",
    "ClassStats",
    "class_stats_partial",
    "SUM_TOLERANCE",
    "binary_cross_entropy",
    "cross_entropy",
    "entropy",
    "find_bad_label",
    "find_invalid_row",
    "js_divergence",
    "kl_divergence",
]
