"""Grade policy: which operators may use a data set of a grade, and what may leave the node.

This is the product's data classification control. It is a table, not code: for each grade
(L1 public .. L4 most sensitive) and each operator family (``psi``, ``pir``, ``stats``, ``fl``
and the proof operator ``count``) a rule is one of

- ``True``: the operator may use the set with any outputs;
- ``False``: the operator may not use the set at all;
- a table ``{parameter: [allowed values]}``: the operator states, for each output parameter,
  what it will let leave the node; a value not listed (or a parameter not stated) is refused.

``"*"`` under a grade is the rule for operators the table does not name (a plugged-in
provider of a new family): fail closed from L2 up. Rule names are ``GRADE.OPERATOR`` and
``GRADE.OPERATOR.PARAMETER``; ``reasons`` says in words why a rule exists, and a refusal
quotes it. The whole thing is TOML-able (``[grades.L4] psi = {reveal = ["count"]}``).

Output parameters the operators state (what of THIS node's data set leaves the node):

=======  ===============  ===============================================================
family   parameter        values
=======  ===============  ===============================================================
psi      reveal           count (only the intersection size), self (this node learns the
                          intersection, peers only its size), peer (peers learn which of
                          this node's ids intersect), both
pir      serve            none (this node only queries; its query ids leave encrypted),
                          records (this node answers queries: matching records leave)
pir      column           each label column a published service serves (asked per column)
stats    noise            dp (aggregates with differential-privacy noise), none (exact)
fl       aggregation      secure (updates leave only under secure aggregation), plain
count    (none)           the signed row count leaves
=======  ===============  ===============================================================
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from appliance.federation.datasets import GRADES, DatasetError

OPERATORS = ("psi", "pir", "stats", "fl", "count")

DEFAULT_POLICY: dict[str, Any] = {
    "grades": {
        # Public: anything, including operators this table does not know.
        "L1": {"*": True, "psi": True, "pir": True, "stats": True, "fl": True, "count": True},
        # Internal: identifiers may be revealed to partners, records are not served.
        "L2": {
            "*": False,
            "psi": True,
            "pir": {"serve": ["none"]},
            "stats": True,
            "fl": True,
            "count": True,
        },
        # Sensitive: neither records nor identifiers leave; aggregates and models may.
        "L3": {
            "*": False,
            "psi": {"reveal": ["count", "self"]},
            "pir": {"serve": ["none"]},
            "stats": True,
            "fl": True,
            "count": True,
        },
        # Most sensitive: only aggregates leave (a count, DP statistics, securely aggregated
        # model updates).
        "L4": {
            "*": False,
            "psi": {"reveal": ["count"]},
            "pir": False,
            "stats": {"noise": ["dp"]},
            "fl": {"aggregation": ["secure"]},
            "count": True,
        },
    },
    "reasons": {
        "L2.*": "only the operators named in the policy may use data above L1",
        "L2.pir.serve": "forbids serving records to peers",
        "L3.*": "only the operators named in the policy may use data above L1",
        "L3.psi.reveal": "forbids revealing identifiers; the intersection may be learnt here "
        "and its size may leave",
        "L3.pir.serve": "forbids serving records to peers",
        "L4.*": "only the operators named in the policy may use data above L1",
        "L4.psi.reveal": "forbids revealing identifiers; only the intersection size may leave",
        "L4.pir": "forbids private query: its answers or queries are row-level",
        "L4.stats.noise": "allows only statistics with differential-privacy noise",
        "L4.fl.aggregation": "allows model updates only under secure aggregation",
    },
}


class PolicyRefused(DatasetError):
    """A use of a data set that the grade policy forbids; ``rule`` names the rule (403)."""

    def __init__(self, message: str, rule: str) -> None:
        super().__init__(message, 403)
        self.rule = rule


class GradePolicy:
    """The default table, with the node's overrides merged in at the level of one rule."""

    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        table = copy.deepcopy(DEFAULT_POLICY)
        if overrides:
            _validate(overrides)
            for grade, rules in overrides.get("grades", {}).items():
                # An override replaces a whole rule: "L3.psi" = {...} is the complete new rule.
                table["grades"][grade].update(copy.deepcopy(dict(rules)))
            table["reasons"].update(overrides.get("reasons", {}))
        _validate(table)
        self._table = table

    def to_dict(self) -> dict[str, Any]:
        """The effective table (for ``datasets policy --json``, the panel, a TOML dump)."""
        return copy.deepcopy(self._table)

    def check_use(
        self,
        grade: str,
        operator: str,
        outputs: Mapping[str, str] | None = None,
        *,
        dataset: str | None = None,
    ) -> None:
        """Return if the policy allows it; raise PolicyRefused naming the rule otherwise."""
        if grade not in GRADES:
            raise DatasetError(f"invalid grade {grade!r}: use one of {', '.join(GRADES)}")
        outputs = dict(outputs or {})
        rules = self._table["grades"][grade]
        key = operator if operator in rules else "*"
        rule = rules.get(key, False)
        who = f'grade {grade} data set "{dataset}"' if dataset else f"grade {grade} data"
        use = f"operator {operator}" + (
            " with " + ", ".join(f"{k}={v}" for k, v in sorted(outputs.items()))
            if outputs
            else ""
        )
        if rule is True:
            return
        if rule is False:
            name = f"{grade}.{key}"
            raise PolicyRefused(
                f"{who} may not be used by {use}: rule {name} "
                f"{self._reason(name, 'forbids this operator')}",
                name,
            )
        for param, allowed in rule.items():
            name = f"{grade}.{operator}.{param}"
            value = outputs.get(param)
            if value is None:
                # Fail closed: an operator that does not say what leaves is assumed to leak.
                raise PolicyRefused(
                    f"{who} may not be used by {use}: rule {name} requires the operator to "
                    f"state {param} (one of {', '.join(allowed)})",
                    name,
                )
            if value not in allowed:
                raise PolicyRefused(
                    f"{who} may not be used by {use}: rule {name} "
                    f"{self._reason(name, f'allows {param} only in {allowed}')}",
                    name,
                )

    def _reason(self, rule: str, default: str) -> str:
        return self._table["reasons"].get(rule, default)


def _validate(table: Mapping[str, Any]) -> None:
    """Refuse a malformed policy with the key at fault, before it can fail open."""
    unknown = set(table) - {"grades", "reasons"}
    if unknown:
        raise DatasetError(f"grade policy: unknown key(s) {sorted(unknown)}")
    grades = table.get("grades", {})
    if not isinstance(grades, Mapping):
        raise DatasetError("grade policy: 'grades' must be a table")
    for grade, rules in grades.items():
        if grade not in GRADES:
            raise DatasetError(f"grade policy: unknown grade {grade!r}")
        if not isinstance(rules, Mapping):
            raise DatasetError(f"grade policy: grades.{grade} must be a table")
        for op, rule in rules.items():
            where = f"grades.{grade}.{op}"
            if isinstance(rule, bool):
                continue
            if not isinstance(rule, Mapping) or op == "*":
                raise DatasetError(f"grade policy: {where} must be true, false or a table")
            for param, allowed in rule.items():
                if not (
                    isinstance(allowed, list | tuple)
                    and all(isinstance(v, str) for v in allowed)
                ):
                    raise DatasetError(
                        f"grade policy: {where}.{param} must be a list of allowed values"
                    )
    reasons = table.get("reasons", {})
    if not isinstance(reasons, Mapping) or not all(
        isinstance(v, str) for v in reasons.values()
    ):
        raise DatasetError("grade policy: 'reasons' must map rule names to text")


_DEFAULT = GradePolicy()


def check_use(
    grade: str,
    operator: str,
    outputs: Mapping[str, str] | None = None,
    *,
    dataset: str | None = None,
    policy: GradePolicy | None = None,
) -> None:
    """``GradePolicy.check_use`` on ``policy`` (the default table when not given)."""
    (policy or _DEFAULT).check_use(grade, operator, outputs, dataset=dataset)
