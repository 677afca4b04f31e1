"""`genrec experiment`: the paper's tables on our data, with seeds, resumable runs and mean ± std summaries.

* :mod:`.table1`: GenRec, its ablations and the baselines (paper Table 1).
* :mod:`.table3`: SFT vs GRPO / GRPO-SR with and without the relevance gate (paper Table 3).
* :mod:`.common`: the tasks (synthetic world, LC-Rec data) with cached SIDs and the summaries they share.
"""

from __future__ import annotations

from .common import RESULT_FILE, SYNTHETIC, format_summary, sequence_task, synthetic_task
from .table1 import Row, Table1Spec, run_table1
from .table3 import Table3Spec, run_table3

__all__ = ["RESULT_FILE", "SYNTHETIC", "Row", "Table1Spec", "Table3Spec", "format_summary", "run_table1",
           "run_table3", "sequence_task", "synthetic_task"]
