"""Joint statistics, provider ``pec``: additive secret sharing over Z_2^128 among 2 to 5
parties (semi-honest). Built: the rows layout's linear statistics (count, sum, mean, var,
std, cov, corr, histograms, the count and sum above a threshold), group-by counts and sums,
and differential privacy at release (Laplace or Gaussian, the noise drawn in parts by every
party); and among 2 or 3 parties the order statistics (min, max, median, quantiles) on
SecretFlow's SPU (``order``). Not built yet, refused by name: the columns layout. docs/stats.md
says who learns what.
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
    description="joint statistics over the union of the parties' rows by additive secret "
                "sharing (Z_2^128, fixed point), 2 to 5 parties",
    params={
        "dataset": "this party's data set",
        "columns": "the numeric columns, C1[,C2...], present at every party",
        "stats": "count,sum,mean,var,std,cov,corr,hist,threshold (default "
                 "count,sum,mean,var,std); min,max,median,quantiles among 2 or 3 parties "
                 "(SPU: CHEETAH or ABY3)",
        "quantiles": "levels Q1,Q2,... in [0, 1] (NumPy's linear interpolation)",
        "hist": "histogram bin edges E0,E1,... (numpy's bins: the last bin is closed)",
        "layout": "rows (default); columns is not built yet",
        "receivers": "all (default: every party learns the result) or initiator (only the "
                     "guest does; the others get a receipt)",
        "dp_epsilon": "differential privacy at release: the total epsilon, split evenly over "
                      "the released aggregates (every statistic of the rows layout)",
        "dp_delta": "with dp_epsilon: the Gaussian mechanism with this delta (default: "
                    "Laplace, pure epsilon)",
        "dp_bounds": "with dp_epsilon: COLUMN:LOW:HIGH,... the range each value is clipped "
                     "to (the sensitivity of sums)",
        "threshold": "T: per column, the count and sum of the values above T (the rows "
                     "layout compares at each party, no secure comparison needed)",
        "group_by": "a categorical column: counts and sums of the columns per value",
        "groups": "with group_by: the values to report (default: the union of the parties' "
                  "values, which each party then learns)",
        "key": "the id column that aligns rows in layout=columns: not built yet",
    },
    inputs=("dataset",),
    outputs=("stats", "undefined", "received"),
    run=run, family="stats", stated=stated_for,
))

__all__ = ["STATS", "stated_for"]
