"""Data sets: the files this node's operators may read in multi-party jobs, with their grade.

Registering never copies the file: the daemon reads it where it lies, checks the id column
and records a fingerprint (docs/datasets.md). The rows never leave the node.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from appliance.panel.daemon import daemon
from appliance.panel.forms import FormError, choice_field, flag_field, text_field

bp = Blueprint("datasets", __name__, url_prefix="/datasets")

# docs/datasets.md, "Grade policy": what the default policy lets out of the node per grade.
GRADES = {
    "L1": "public: any operator may use it, and any output may leave",
    "L2": "internal: any output but served records may leave (the default)",
    "L3": "sensitive: neither records nor identifiers leave (PSI reveals a count or to "
          "this node only)",
    "L4": "most sensitive: only aggregates leave (a count, DP statistics, securely "
          "aggregated model updates)",
}
DEFAULT_GRADE = "L2"
# Names the daemon's API routes (GET/DELETE /v1/datasets/NAME) accept, so that a data set added
# here can be removed here; the registry itself would take up to 64 characters.
DATASET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
DATASET_NAME_RULE = "1-32 characters of a-z, 0-9, '_', '-' starting with a letter or digit"
# What a listed name may look like in this panel's URLs (the daemon answers for the rest).
LISTED_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MAX_PATH = 4096
FINGERPRINT_PREFIX = 16


def dataset_name(value: str, rule: re.Pattern[str] = DATASET_NAME) -> str:
    if not rule.fullmatch(value):
        raise FormError(f"a data set name is {DATASET_NAME_RULE}")
    return value


def dataset_rows(datasets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**ds, "fingerprint_prefix": (ds.get("fingerprint") or "")[:FINGERPRINT_PREFIX]}
            for ds in datasets]


@bp.get("")
def index() -> str:
    datasets = daemon().get("/v1/datasets").get("datasets", [])
    return render_template(
        "datasets.html",
        datasets=dataset_rows(datasets),
        grades=GRADES,
        default_grade=DEFAULT_GRADE,
        name_rule=DATASET_NAME_RULE,
        max_path=MAX_PATH,
    )


@bp.post("")
def add() -> Any:
    name = dataset_name(text_field(request.form, "name", max_len=32))
    path = text_field(request.form, "path", max_len=MAX_PATH)
    if not path.startswith("/"):
        raise FormError(f"path must be an absolute path on the appliance, not {path!r}")
    id_column = text_field(request.form, "id_column", max_len=256)
    grade = choice_field(request.form, "grade", GRADES)
    ds = daemon().post("/v1/datasets", {"name": name, "path": path, "id_column": id_column,
                                        "grade": grade})
    flash(f"Data set {name} registered: {ds.get('row_count')} rows, grade {ds.get('grade')}, "
          f"fingerprint {str(ds.get('fingerprint'))[:FINGERPRINT_PREFIX]}…", "success")
    return redirect(url_for("datasets.index"))


@bp.post("/<name>/remove")
def remove(name: str) -> Any:
    dataset_name(name, LISTED_NAME)
    if not flag_field(request.form, "confirm"):
        raise FormError(f"tick the box to confirm that data set {name} is to be removed")
    daemon().delete(f"/v1/datasets/{name}", {})
    flash(f"Data set {name} removed; the file itself is untouched.", "success")
    return redirect(url_for("datasets.index"))
