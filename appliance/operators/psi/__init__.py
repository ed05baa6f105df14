"""Private set intersection of two parties: provider ``pec`` (two-party ECDH-PSI on
Curve25519, X25519, our own) or ``secretflow`` (SecretFlow's PSI engine plugged in: RR22, KKRT
or ECDH from ``spu``, run by ``secretflow`` under the same peers, policy, jobs and ledger).

The native engine (``ecdh_engine``, C over libsodium) does the curve work in batches on all cores;
``protocol`` runs one party's side over the job's session. ``mode=unbalanced`` runs an
ECDH-OPRF on ristretto255 instead (``unbalanced``, ``unbalanced_job``, ``r255``): the host's
large set encrypted once offline, the guest's small set queried online. docs/psi.md says who
learns what.
"""

from __future__ import annotations

from appliance.operators.base import Operator, register
from appliance.operators.psi.protocol import run, stated_for

PSI = register(Operator(
    name="psi", provider="pec", version="1.0", roles=("guest", "host"),
    description="private set intersection of two parties' ids (ECDH-PSI, Curve25519; or "
                "SecretFlow's RR22, KKRT, ECDH)",
    params={
        "dataset": "this party's data set (its id column is matched)",
        "provider": "pec (default: the native engine) or secretflow (SecretFlow's spu.psi, "
                    "run from its own venv; docs/psi.md \"Provider secretflow\")",
        "protocol": "ecdh (pec's only one) or, with provider secretflow, rr22 (its default), "
                    "kkrt or ecdh",
        "reveal": "both (each party learns its own rows in the intersection), initiator (only "
                  "the guest does; the host learns the size), cardinality (both learn only "
                  "the size)",
        "batch_size": "points per message (default 65536)",
        "mode": "balanced (default: both sides encrypt their whole sets per job) or "
                "unbalanced (the guest's small set queried against the host's large set "
                "through an OPRF; the host's table is built once and cached by the guest; "
                "reveal=initiator only; docs/psi.md \"Unbalanced mode\")",
        "join": "the guest's (initiator's) payload columns, COL[,COL...]: each party writes "
                "the intersection with its own payload columns, both files in the same row "
                "order (needs reveal=both; join or peer_join turns it on)",
        "peer_join": "the host's payload columns for join, COL[,COL...] (default none: the "
                     "host writes its aligned ids only)",
        "buckets": "auto (default: one per 4,194,304 ids of the larger set) or N: the sets "
                   "run bucket by bucket, so memory stays bounded; each party learns the "
                   "other's count per bucket",
        "resume": "an interrupted psi job's id: go on from the last bucket both finished",
    },
    inputs=("dataset",),
    outputs=("intersection_size", "rows_file", "rows_sha256"),
    run=run, family="psi", stated=stated_for,
))



def run_local_pair(a_ids: list[str], b_ids: list[str], reveal: str = "both") -> dict:
    """Both parties in this process (the benchmark's native row); see ``local``."""
    from appliance.operators.psi.local import run_local_pair as run

    return run(a_ids, b_ids, reveal)


__all__ = ["PSI", "run_local_pair", "stated_for"]
