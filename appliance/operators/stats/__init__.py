"""Joint statistics, provider ``pec``, among 2 to 5 parties (semi-honest). The rows layout:
the linear statistics (count, sum, mean, var, std, cov, corr, histograms, the count and sum
above a threshold), group-by counts and sums and differential privacy at release by our own
additive sharing over Z_2^128 (``protocol``); the order statistics (min, max, median,
quantiles) on SecretFlow's SPU (``order``). The columns layout: the parties' columns joined on
a key inside SPU, which nobody sees, and every statistic over the join, with a threshold on
the row sum across parties and differential privacy (``columns``). docs/stats.md says who
learns what.
"""

from __future__ import annotations

from typing import Any

from appliance.operators.base import Operator, register
from appliance.operators.stats.protocol import run


def stated_for(role: str | None, params: dict[str, Any]) -> dict[str, str]:
    """The grade policy's stats ``noise``: dp only when a dp_epsilon is stated."""
    return {"noise": "dp" if params.get("dp_epsilon") not in (None, "") else "none"}


STATS = register(Operator(
    name="stats", provider="pec", version="0.1", roles=("guest", "host"),
    description="joint statistics among 2 to 5 parties: over the union of their rows "
                "(additive secret sharing, and SPU for order statistics) or over their "
                "columns joined in secret on a key (SPU)",
    params={
        "dataset": "this party's data set",
        "columns": "the numeric columns, C1[,C2...]: rows, present at every party; columns, "
                   "PARTY.COLUMN (self: the initiator)",
        "stats": "count,sum,mean,var,std,cov,corr,hist,threshold (default "
                 "count,sum,mean,var,std); min,max,median,quantiles (SPU: CHEETAH between two, "
                 "ABY3 among three computing parties)",
        "quantiles": "levels Q1,Q2,... in [0, 1] (NumPy's linear interpolation)",
        "hist": "histogram bin edges E0,E1,... (numpy's bins: the last bin is closed)",
        "layout": "rows (default: the union of the parties' rows) or columns (the parties' "
                  "columns joined on key inside SPU; nobody learns the join)",
        "receivers": "all (default: every party learns the result) or initiator (only the "
                     "guest does; the others get a receipt)",
        "dp_epsilon": "differential privacy at release: the total epsilon, split evenly over "
                      "the released aggregates (every statistic but the order statistics, "
                      "in both layouts)",
        "dp_delta": "with dp_epsilon: the Gaussian mechanism with this delta (default: "
                    "Laplace, pure epsilon)",
        "dp_bounds": "with dp_epsilon: COLUMN:LOW:HIGH,... the range each value is clipped "
                     "to (the sensitivity of sums; columns named as in columns)",
        "threshold": "T: rows, per column the count and sum of the values above T (compared "
                     "at each party); columns, the count and sum of the rows whose sum across "
                     "the columns is above T (compared inside SPU)",
        "group_by": "a categorical column (columns layout: PARTY.COLUMN): counts and sums "
                    "of the columns per value",
        "groups": "with group_by: the values to report (default: the union of the parties' "
                  "values, which each party then learns)",
        "key": "layout=columns: the id column that joins the parties' rows (default: each "
               "data set's id column)",
    },
    inputs=("dataset",),
    outputs=("stats", "undefined", "received"),
    run=run, family="stats", stated=stated_for,
))

__all__ = ["STATS", "stated_for"]
