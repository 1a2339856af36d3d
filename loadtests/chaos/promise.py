"""The README's promise, as checks on one scenario's result.

Every accepted request ends with a clear outcome: nothing hung, no stream truncated
without an error event, no error outside the retriable kinds (an ingress kill may lose the
requests that replica held, as connection errors), the ledger holds each accepted request
exactly once, and the success rate comes back (within `recovery_bound_s` when given).
"""

from __future__ import annotations

from typing import Protocol

from loadtests.chaos.ledger_check import LedgerCheck


class _Result(Protocol):
    name: str
    counts: dict[str, int]
    recovery_s: float | None
    ledger: LedgerCheck


def violations(result: _Result, recovery_bound_s: float | None = None,
               ledger: bool = True) -> list[str]:
    """What broke the promise (empty: it held); `ledger=False` leaves the ledger out."""
    c, out = result.counts, []
    for kind, label in (("hung", "hung"), ("truncated", "truncated streams"),
                        ("other", "non-retriable errors")):
        if c.get(kind, 0):
            out.append(f"{c[kind]} {label}")
    check = result.ledger
    if ledger and check.missing:
        out.append(f"{len(check.missing)} accepted requests missing from the ledger "
                   f"(e.g. {check.missing[:3]})")
    if ledger and check.duplicates:
        out.append(f"{len(check.duplicates)} requests in the ledger more than once "
                   f"(e.g. {check.duplicates[:3]})")
    if result.recovery_s is None:
        out.append("the success rate was still below 99% when the run ended")
    elif recovery_bound_s is not None and result.recovery_s > recovery_bound_s:
        out.append(f"recovery took {result.recovery_s:.1f} s (bound {recovery_bound_s:g} s)")
    return out
