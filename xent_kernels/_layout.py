"""Index constants of the kernels, derived from the table in ``statistics.py``.

The Numba modules import these as module-level ints, which Numba freezes into
compile-time constants: a field index costs nothing at run time. A new statistic's
field gets its constant here by name; its position comes from the table.
"""

from __future__ import annotations

from .statistics import CELL_FIELDS, HIST_FIELDS, ROC_FIELDS, ROW_COUNT_FIELDS

# Fields of the per-(slice, class) cell: ClassStats.cell_sum[..., field].
WEIGHT = CELL_FIELDS.index("weight")
CE = CELL_FIELDS.index("ce")
TOP1 = CELL_FIELDS.index("top1")
TOP5 = CELL_FIELDS.index("top5")
P_TRUE = CELL_FIELDS.index("p_true")
ENTROPY = CELL_FIELDS.index("entropy")
KL = CELL_FIELDS.index("kl")
BRIER = CELL_FIELDS.index("brier")
PREDICTED = CELL_FIELDS.index("predicted")  # summed into the cell of the predicted class
N_CELL_FIELDS = len(CELL_FIELDS)

# Fields of the per-(slice, bin) confidence histogram: ClassStats.hist_sum[..., field].
HIST_WEIGHT = HIST_FIELDS.index("weight")
HIST_CORRECT = HIST_FIELDS.index("correct")
HIST_CONF = HIST_FIELDS.index("conf")
N_HIST_FIELDS = len(HIST_FIELDS)

# Per-slice row counts that are not in any cell: ClassStats.row_counts[:, field].
IGNORED = ROW_COUNT_FIELDS.index("ignored")
NONFINITE = ROW_COUNT_FIELDS.index("nonfinite")
N_ROW_COUNT_FIELDS = len(ROW_COUNT_FIELDS)

# Fields of the per-(slice, class, bin) ROC histograms: ClassStats.roc_sum[..., field].
ROC_POSITIVE = ROC_FIELDS.index("positive")
ROC_ALL = ROC_FIELDS.index("all")
N_ROC_FIELDS = len(ROC_FIELDS)

# The kernels' per-cell block: plain float64 sums over the rows since the cell's last
# fold (``_fold.py``). Field k < N_CELL_FIELDS is cell field k, except that the CE
# slot holds Σw·(CE - K), K the cell's shift; then Σw·(CE - K)² and the row count.
BLK_CE_SQ = N_CELL_FIELDS
BLK_COUNT = N_CELL_FIELDS + 1
N_BLK_FIELDS = N_CELL_FIELDS + 2

# --------------------------------------------------------------------------- narrow scratch

# Rows per narrow block. A compile-time constant: it is the stride between the rows of
# the narrow scratch, so every offset is a constant multiple plus the row index.
NARROW_ROWS = 128

# The narrow scratch W is one flat float64 array of NARROW_ROWS-long rows: first these
# per-row values, then the C rows of T (log-weights), then the C rows of E = exp(T):
# W[row * NARROW_ROWS + i]. One allocation with offsets fixed per loop means LLVM sees a
# single base pointer and vectorizes loops over several rows without runtime alias checks.
# Prepare stage (``prepare_block_narrow``, ``_kl_narrow``): _TOP max logit, _TOT Σe,
# _LOGN log-normaliser, _INV 1/Σe, _CONF top probability, _OK finite flag, _TY t of the
# true class, _ET Σ e·t, _RANK rank of the true class, _Y label, _KL KL(reference‖pred).
# _PTRUE is first written in the scatter stage, _SCALE (the marginal's w/Σe, 0 for rows
# that do not count) just before it. _E2 is Σe², _ARG the predicted class (the first
# with the top probability); _PCELL is written in the scatter stage.
_TOP, _TOT, _LOGN, _INV, _CONF, _OK, _TY, _PTRUE, _ET, _RANK, _Y, _KL, _SCALE, _E2, _ARG, _PCELL = range(16)
_N_ROW_FIELDS = 16
_T0 = _N_ROW_FIELDS * NARROW_ROWS

# Scatter stage (``_class_stats_narrow``): once a block's per-row values are turned into
# what the scatter adds, rows of the prepare stage that are no longer needed hold them.
# Rows not listed keep their meaning (_OK: the row counts; _SCALE: the marginal scale).
_ROW_WEIGHT = _TOP  # w
_ROW_CELL = _Y  # (slice * K + bucket) * C + label
_ROW_CE = _TY  # CE (capped at max_ce)
_ROW_W_ENTROPY = _ET  # w·entropy
_ROW_W_P_TRUE = _PTRUE  # w·p_true
_ROW_W_TOP1 = _RANK  # w if the true class ranks first, else 0
_ROW_W_TOP5 = _TOT  # w if it ranks in the top 5, else 0
_ROW_W_CONF = _CONF  # w·confidence
_ROW_W_KL = _KL  # w·KL(reference‖pred)
_ROW_HIST = _LOGN  # offset of the row's (slice, bucket, bin) in the flat histogram
_ROW_W_BRIER = _E2  # w·Σ_j (q_j - y_j)²
_ROW_PRED_CELL = _PCELL  # (slice, bucket, predicted class): where the row's "predicted" weight goes
# ``ce_hard_rows_narrow``: Σ_j max(log q_j, log eps) for label smoothing.
_ROW_SUM_LOG_Q = _SCALE
