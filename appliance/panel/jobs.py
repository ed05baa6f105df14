"""Jobs: the list with filters, details and logs, progress polling, submission (local jobs and
multi-party jobs with partners) and cancel."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from werkzeug.datastructures import MultiDict

from appliance.jobs.states import FINAL, RESUMABLE, STATES
from appliance.panel.charts import benchmark_chart, training_chart
from appliance.panel.daemon import DaemonError, daemon, error_message
from appliance.panel.datasets import LISTED_NAME, dataset_name
from appliance.panel.forms import FormError, choice_field, int_field, page_number, text_field
from appliance.panel.partners import peer_name

bp = Blueprint("jobs", __name__, url_prefix="/jobs")

FINISHED_STATES = frozenset(FINAL)
RESUMABLE_STATES = frozenset(RESUMABLE)
# These kinds take parameters and have their own forms (Accelerators, Keys).
KINDS_WITH_OWN_FORM = frozenset({"benchmark", "keygen"})
PAGE_SIZE = 25
# The daemon describes every operator's job kind as "... (operator PROVIDER/NAME VERSION)".
OPERATOR_MARK = "(operator "
ACTIVE = "active"
# docs/psi.md: who learns what (the operator's `reveal` parameter).
PSI_REVEALS = {
    "both": "each party learns its own rows in the intersection",
    "initiator": "only this node learns its rows; the partner learns the size",
    "cardinality": "both learn only the size of the intersection",
}
DEFAULT_REVEAL = "both"
# docs/psi.md: the native engine, or SecretFlow's plugged in (protocol: its choice)
PSI_ENGINES = {
    "pec/ecdh": "native ECDH-PSI on Curve25519 (every reveal, buckets, resume)",
    "secretflow/rr22": "SecretFlow's RR22 (VOLE-based; the fastest; reveal both or initiator)",
    "secretflow/kkrt": "SecretFlow's KKRT (OT-based; reveal both or initiator)",
    "secretflow/ecdh": "SecretFlow's ECDH on Curve25519 (reveal both or initiator)",
}
# the train operator's choices (docs/fl.md)
TRAIN_ALGORITHMS = {
    "homo_lr": "logistic regression (needs a label column)",
    "homo_nn": "multi-layer perceptron (needs a label column)",
    "homo_kmeans": "k-means clustering (no label)",
    "hetero_lr": "vertical logistic regression: this node's binary label, the partners' "
                 "features of the same people (label and key column; rounds are epochs)",
    "hetero_secureboost": "vertical gradient-boosted trees (SecureBoost): label and key "
                          "column as for hetero_lr; rounds are trees, of depth 3",
}
# the stats operator's receivers (docs/stats.md)
RECEIVERS = {
    "all": "every party learns the statistics",
    "initiator": "only this node learns them; the partners get a receipt",
}
STATS_LAYOUTS = {
    "rows": "every party holds rows with the same columns: statistics over all their rows",
    "columns": "the parties hold different columns of the same ids (PARTY.COLUMN names, "
               "self for this node): statistics over the ids all hold, joined in secret",
}
AGGREGATIONS = {
    "mask": "pairwise masks: the aggregator sees only the sum (three or more parties)",
    "paillier": "Paillier: a host holds the key and decrypts only the sum (three or more)",
    "none": "plain updates to the aggregator (for comparison; L4 data refuses it)",
}
# What the job page sums up of a multi-party job's outputs, in this order.
OUTPUT_LABELS = {
    "intersection_size": "Intersection size",
    "dataset": "Kept as data set",
    "own_rows": "Rows of this node",
    "total_rows": "Rows of all parties",
}


def selftest_rows(result: Any) -> list[dict[str, Any]]:
    """A selftest result as one row per backend: verdict, the checks that passed or failed,
    devices and reason (the raw JSON is too wide to read)."""
    backends = result.get("backends") if isinstance(result, dict) else None
    if not isinstance(backends, dict):
        return []
    rows = []
    for name, report in sorted(backends.items()):
        if not isinstance(report, dict):
            continue
        checks = report.get("checks") if isinstance(report.get("checks"), dict) else {}
        rows.append({
            "backend": name,
            "ok": report.get("ok"),
            "passed": [check for check, ok in checks.items() if ok],
            "failed": [check for check, ok in checks.items() if not ok],
            "devices": report.get("devices") or [],
            "reason": report.get("reason"),
        })
    return rows


def is_multi_party(job: dict[str, Any]) -> bool:
    """A job that runs with partners: it names its peers (the initiator) or carries the
    federation block a peer created it with (the other parties)."""
    params = job.get("params")
    return isinstance(params, dict) and ("peers" in params or "federation" in params)


def job_parties(job_id: int) -> tuple[dict[str, Any] | None, str | None]:
    """The parties of a multi-party job; (None, None) for a local job (the daemon answers 404),
    (None, reason) when the daemon cannot say."""
    try:
        fed = daemon().get(f"/v1/jobs/{job_id}/parties")
    except DaemonError as error:
        if error.status == 404:
            return None, None
        if error.status == 0:
            raise
        return None, error_message(error)
    rows = [
        {**party, "output_hash_prefix": (party.get("output_hash") or "")[:16]}
        for party in fed.get("parties", [])
    ]
    return {"job_id": fed.get("job_id"), "parties": rows}, None


def job_kinds() -> list[dict[str, Any]]:
    """The daemon's job kinds: kind, description, requires, allowed (by this node's profile)."""
    return daemon().get("/v1/job-kinds")["kinds"]


#: kinds that run locally or, with partners, as an operator: in both forms
WITH_PARTNERS_TOO = ("predict",)


def is_operator(kind: dict[str, Any]) -> bool:
    """An operator's job kind: it runs with partners and has the "Run with partners" form."""
    return OPERATOR_MARK in str(kind.get("description") or "")


def runs_with_partners(kind: dict[str, Any]) -> bool:
    """Offered by the "Run with partners" form: operators, and predict (a vertical model's
    joint inference)."""
    return is_operator(kind) or kind.get("kind") in WITH_PARTNERS_TOO


def outputs_summary(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline outputs of a finished multi-party job (a psi's intersection size and the
    data set it became, a count's rows) as label/value rows; [] for anything else."""
    result = job.get("result")
    outputs = result.get("outputs") if isinstance(result, dict) else None
    if job.get("state") != "done" or not isinstance(outputs, dict):
        return []
    return [{"key": key, "label": label, "value": outputs[key]}
            for key, label in OUTPUT_LABELS.items() if outputs.get(key) is not None]


def partner_choices() -> tuple[list[dict[str, Any]], list[str]]:
    """What the "Run with partners" form offers: the active partners and this node's data
    set names."""
    client = daemon()
    peers = [p for p in client.get("/v1/peers").get("peers", []) if p.get("state") == ACTIVE]
    datasets = [str(ds["name"]) for ds in client.get("/v1/datasets").get("datasets", [])]
    return peers, datasets


def multi_party_params(form: MultiDict[str, str], kinds: list[str], peers: list[str],
                       datasets: list[str]) -> tuple[str, dict[str, Any]]:
    """The kind and params of a multi-party job from the submitted form. `peers`: the names
    of the active partners; each chosen one names its data set in `dataset_of_NAME`."""
    kind = choice_field(form, "operator", kinds)
    chosen = form.getlist("peers")
    if not chosen:
        raise FormError("choose at least one partner")
    if len(set(chosen)) != len(chosen):
        raise FormError("a partner is chosen twice")
    for name in chosen:
        if peer_name(name) not in peers:
            raise FormError(f"{name} is not an active partner of this node")
    if not datasets:
        raise FormError("this node has no data set yet: add one on Data sets first")
    params: dict[str, Any] = {"peers": chosen, "dataset": choice_field(form, "dataset", datasets)}
    if kind == "psi" and len(chosen) != 1:
        raise FormError("psi runs between two parties: choose exactly one partner")
    theirs: dict[str, str] = {}
    for name in chosen:
        if not str(form.get(f"dataset_of_{name}") or "").strip():
            raise FormError(f"name the data set of partner {name} (as it is registered there)")
        theirs[name] = dataset_name(text_field(form, f"dataset_of_{name}", max_len=64),
                                    LISTED_NAME)
    if len(chosen) == 1:
        params["peer_dataset"] = theirs[chosen[0]]
    else:
        params["peer_datasets"] = theirs
    if kind == "psi":
        params["params"] = {"reveal": choice_field(form, "reveal", PSI_REVEALS)}
        engine = (choice_field(form, "engine", PSI_ENGINES)
                  if str(form.get("engine") or "").strip() else "pec/ecdh")
        if engine != "pec/ecdh":  # the default needs no parameter
            provider, protocol = engine.split("/")
            params["params"].update(provider=provider, protocol=protocol)
    if kind == "stats":
        params["params"] = {
            "columns": text_field(form, "columns", max_len=4096),
            "stats": text_field(form, "stats", max_len=256),
            "receivers": choice_field(form, "receivers", RECEIVERS)}
        if str(form.get("layout") or "").strip():
            params["params"]["layout"] = choice_field(form, "layout", STATS_LAYOUTS)
        # optional: group-by, differential privacy, order statistics' levels, a threshold,
        # histogram edges, the columns layout's key (the operator checks the values)
        for name, field, size in (("group_by", "group_by", 256), ("dp_epsilon", "dp_epsilon", 32),
                                  ("dp_bounds", "dp_bounds", 4096),
                                  ("quantiles", "quantiles", 256),
                                  ("threshold", "threshold", 64), ("hist", "hist", 4096),
                                  ("key", "stats_key", 256)):
            if str(form.get(field) or "").strip():
                params["params"][name] = text_field(form, field, max_len=size)
    if kind == "iv":
        params["params"] = {"label": text_field(form, "label", max_len=256),
                            "key": text_field(form, "key", max_len=256),
                            "bins": int_field(form, "bins", minimum=2, maximum=100)}
    if kind == "predict":
        label = str(form.get("label") or "").strip()
        params["params"] = {"model": text_field(form, "model", max_len=160),
                            **({"label": text_field(form, "label", max_len=256)}
                               if label else {})}
    if kind == "train":
        algorithm = choice_field(form, "algorithm", TRAIN_ALGORITHMS)
        train: dict[str, Any] = {"algorithm": algorithm}
        if algorithm.startswith("hetero_"):
            rounds = "epochs" if algorithm == "hetero_lr" else "trees"
            train |= {"label": text_field(form, "label", max_len=256),
                      "key": text_field(form, "key", max_len=256),
                      rounds: int_field(form, "rounds", minimum=1, maximum=500)}
            params["params"] = train
            return kind, params
        train |= {"rounds": int_field(form, "rounds", minimum=1, maximum=1000),
                  "secure_aggregation": choice_field(form, "secure_aggregation", AGGREGATIONS)}
        if algorithm == "homo_kmeans":
            train["clusters"] = int_field(form, "clusters", minimum=1, maximum=1024)
        else:
            train["label"] = text_field(form, "label", max_len=256)
        params["params"] = train
    return kind, params


@bp.get("")
def index() -> str:
    kinds = job_kinds()
    state = request.args.get("state", "")
    kind = request.args.get("kind", "")[:32]
    page = page_number(request.args)
    query: dict[str, Any] = {"limit": PAGE_SIZE, "offset": (page - 1) * PAGE_SIZE}
    if state in STATES:
        query["state"] = state
    if kind:
        query["kind"] = kind
    listing = daemon().get("/v1/jobs", **query)
    total = int(listing.get("total", 0))
    jobs = [{**job, "multi_party": is_multi_party(job)} for job in listing["jobs"]]
    peers, datasets = partner_choices() if current_user.is_admin else ([], [])
    return render_template(
        "jobs.html",
        jobs=jobs,
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        state=state if state in STATES else "",
        kind=kind,
        states=STATES,
        all_kinds=[k["kind"] for k in kinds],
        submittable=[k for k in kinds
                     if k["kind"] not in KINDS_WITH_OWN_FORM and not is_operator(k)],
        operators=[k for k in kinds if runs_with_partners(k)],
        peers=peers,
        datasets=datasets,
        reveals=PSI_REVEALS,
        psi_engines=PSI_ENGINES,
        default_reveal=DEFAULT_REVEAL,
        algorithms=TRAIN_ALGORITHMS,
        receivers=RECEIVERS, stats_layouts=STATS_LAYOUTS,
        aggregations=AGGREGATIONS,
        finished=FINISHED_STATES,
    )


@bp.get("/<int:job_id>")
def detail(job_id: int) -> str:
    client = daemon()
    job = client.get(f"/v1/jobs/{job_id}")
    lines = client.get(f"/v1/jobs/{job_id}/log").get("lines", [])
    federation, parties_error = job_parties(job_id)
    return render_template(
        "job.html",
        job=job,
        federation=federation,
        parties_error=parties_error,
        lines=lines,
        finished=FINISHED_STATES,
        resumable=RESUMABLE_STATES,
        params_text=json.dumps(job.get("params"), indent=2, sort_keys=True),
        result_text=json.dumps(job.get("result"), indent=2, sort_keys=True)
        if job.get("result") is not None
        else None,
        chart=benchmark_chart(job.get("result")) if job.get("kind") == "benchmark" else None,
        training=training_chart(job.get("result")) if job.get("kind") == "train" else None,
        selftest=selftest_rows(job.get("result")) if job.get("kind") == "selftest" else [],
        summary=outputs_summary(job) if is_multi_party(job) else [],
    )


@bp.get("/<int:job_id>.json")
def progress(job_id: int) -> Any:
    job = daemon().get(f"/v1/jobs/{job_id}")
    fields = ("id", "kind", "state", "progress", "message", "error")
    return jsonify({name: job.get(name) for name in fields}
                   | {"finished": job.get("state") in FINISHED_STATES})


@bp.post("")
def submit() -> Any:
    kind = text_field(request.form, "kind", max_len=32)
    known = [k["kind"] for k in job_kinds()
             if k["kind"] not in KINDS_WITH_OWN_FORM and not is_operator(k)]
    if kind not in known:
        raise FormError(f"unknown job kind {kind!r}: choose one of {', '.join(known)}")
    job = daemon().post("/v1/jobs", {"kind": kind, "params": {}})
    flash(f"Job {job['id']} ({kind}) queued.", "info")
    return redirect(url_for("jobs.detail", job_id=job["id"]))


@bp.post("/multi-party")
def submit_multi_party() -> Any:
    operators = [k["kind"] for k in job_kinds() if runs_with_partners(k)]
    peers, datasets = partner_choices()
    kind, params = multi_party_params(request.form, operators,
                                      [str(p["name"]) for p in peers], datasets)
    job = daemon().post("/v1/jobs", {"kind": kind, "params": params})
    flash(f"Job {job['id']} ({kind} with {', '.join(params['peers'])}) queued: the parties "
          "below show each partner's progress.", "info")
    return redirect(url_for("jobs.detail", job_id=job["id"]))


@bp.post("/<int:job_id>/cancel")
def cancel(job_id: int) -> Any:
    job = daemon().post(f"/v1/jobs/{job_id}/cancel", {})
    flash(f"Job {job_id} is {job.get('state', 'being cancelled')}.", "info")
    return redirect(url_for("jobs.detail", job_id=job_id))


@bp.post("/<int:job_id>/approve")
def approve(job_id: int) -> Any:
    daemon().post(f"/v1/jobs/{job_id}/approve", {})
    flash(f"Job {job_id} approved: it is queued and starts with its parties.", "info")
    return redirect(url_for("jobs.detail", job_id=job_id))


@bp.post("/<int:job_id>/resume")
def resume(job_id: int) -> Any:
    daemon().post(f"/v1/jobs/{job_id}/resume", {})
    flash(f"Job {job_id} is queued again; it starts over.", "info")
    return redirect(url_for("jobs.detail", job_id=job_id))
