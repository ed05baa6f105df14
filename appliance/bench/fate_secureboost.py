"""FATE 2.2's own hetero SecureBoost on one machine: the reference for `bench fl --secureboost`.

    build/fate-venv/bin/python appliance/bench/fate_secureboost.py DATA.npz TREES DEPTH

Runs in the FATE venv (`make fate-venv`), never in the appliance's: it imports only numpy,
scikit-learn and FATE (pyfate 2.2.0), not the `appliance` package. DATA.npz holds ``xg``
(guest features), ``xh`` (host features), ``y`` (0/1 labels, guest side), and ``train`` and
``test`` (row indices). The guest holds ``y`` and ``xg``, the host ``xh``; both train on the
``train`` rows with FATE's default Paillier (1024-bit keys), learning rate 0.3, 32 bins and
the binary logistic objective, then predict the ``test`` rows. FATE's multiprocess launcher
runs each party in a process of its own over the standalone (local files) computing and
federation back ends, as FATE's own tutorials do. Prints one line ``RESULT {json}``.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

GUEST = "guest:9999"
HOST = "host:10000"
# FATE's own component default (hetero_secureboost's he_param), also cfg's minimum key size.
PHE = {"kind": "paillier", "key_length": 1024}


def _frame(ctx: Any, x: np.ndarray, rows: np.ndarray, y: np.ndarray | None) -> Any:
    """A FATE DataFrame of ``rows`` of ``x`` (and the label ``y``, on the guest).

    The row number is both sample id and match id, so the two parties' rows line up as if
    PSI had already run (FATE's SecureBoost expects aligned data).
    """
    import pandas as pd
    from fate.arch.dataframe import PandasReader

    df = pd.DataFrame(x[rows], columns=[f"x{i}" for i in range(x.shape[1])])
    df.insert(0, "sid", rows.astype(str))
    df.insert(1, "id", rows.astype(str))
    if y is not None:
        df.insert(2, "y", y[rows].astype(np.int32))
    reader = PandasReader(
        sample_id_name="sid",
        match_id_name="id",
        label_name="y" if y is not None else None,
        dtype="float64",
    )
    return reader.to_frame(ctx, df)


def _cpu() -> float:
    """CPU seconds of this process and its live children: the standalone back end runs the
    partition work (the Paillier arithmetic included) in a process pool of its own."""
    import psutil  # a dependency of pyfate's (via accelerate), so in the FATE venv

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _party(data: str, trees: int, depth: int, out: str, ctx: Any) -> None:
    """One party's whole run; FATE's launcher calls it in each party's process.

    Times are taken here rather than around the launcher, whose shutdown sleeps a fixed 10 s.
    """
    from fate.ml.ensemble import HeteroSecureBoostGuest, HeteroSecureBoostHost

    start = time.time()
    arrays = np.load(data)
    train, test = arrays["train"], arrays["test"]
    guest = ctx.is_on_guest
    x, y = (arrays["xg"], arrays["y"]) if guest else (arrays["xh"], None)
    train_df, test_df = _frame(ctx, x, train, y), _frame(ctx, x, test, y)
    if guest:
        # Set explicitly so the key size is the component's default, not whatever cfg says.
        ctx.cipher.set_phe(ctx.device, PHE)
        model: Any = HeteroSecureBoostGuest(
            num_trees=trees, max_depth=depth, learning_rate=0.3, max_bin=32, objective="binary:bce"
        )
    else:
        model = HeteroSecureBoostHost(num_trees=trees, max_depth=depth, max_bin=32)
    t0, cpu0 = time.time(), _cpu()
    model.fit(ctx.sub_ctx("train"), train_df)
    t1 = time.time()
    pred = model.predict(ctx.sub_ctx("predict"), test_df)
    t2 = time.time()
    record: dict[str, Any] = {
        "start": start,
        "end": t2,
        "fit": t1 - t0,
        "predict": t2 - t1,
        "cpu": _cpu() - cpu0,
    }
    if guest:
        frame = pred.as_pd_df()
        record["auc_rows"] = [
            frame["sid"].astype(int).tolist(),
            frame["predict_score"].astype(float).tolist(),
        ]
    Path(out, "guest.json" if guest else "host.json").write_text(json.dumps(record))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    data, trees, depth = os.path.abspath(argv[0]), int(argv[1]), int(argv[2])

    import fate
    from fate.arch.launchers.multiprocess_launcher import launch
    from sklearn.metrics import roc_auc_score

    with tempfile.TemporaryDirectory(prefix="fate-sbt-") as tmp:
        # The launcher re-reads sys.argv in every party process (parties, rank, log level,
        # standalone data dir), so our own arguments travel in the partial instead.
        sys.argv = [
            sys.argv[0],
            "--parties",
            GUEST,
            HOST,
            "--log_level",
            "WARNING",
            "--data_dir",
            os.path.join(tmp, "standalone"),
        ]
        wall0 = time.time()
        try:
            launch(functools.partial(_party, data, trees, depth, tmp))
        except SystemExit as stop:  # block_run ends with exit(code)
            if stop.code:
                print(f"FATE launcher failed with exit code {stop.code}", file=sys.stderr)
                return 1
        launcher_wall = time.time() - wall0
        guest = json.loads(Path(tmp, "guest.json").read_text())
        host = json.loads(Path(tmp, "host.json").read_text())

    # Both parties (and their pools) have been joined by now: all their CPU time is here.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    sid, score = guest["auc_rows"]
    arrays = np.load(data)
    result = {
        "fate_version": fate.__version__,
        "trees": trees,
        "depth": depth,
        "train_rows": len(arrays["train"]),
        "test_rows": len(arrays["test"]),
        "fit_seconds": round(guest["fit"], 3),
        "predict_seconds": round(guest["predict"], 3),
        # Launch to the later party's end of predict: process start, imports, data loading,
        # fit and predict, without the launcher's fixed 10 s shutdown sleep.
        "total_seconds": round(max(guest["end"], host["end"]) - wall0, 3),
        "launcher_wall_seconds": round(launcher_wall, 3),
        # Both parties' processes and their pools, fit and predict only / everything.
        "cpu_seconds": round(guest["cpu"] + host["cpu"], 3),
        "cpu_seconds_with_startup": round(usage.ru_utime + usage.ru_stime, 3),
        # The machines are shared: the load beside the times.
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "auc": round(float(roc_auc_score(arrays["y"][sid], score)), 6),
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
