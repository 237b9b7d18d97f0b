"""The driver's record of a stop request (Ctrl-C / SIGTERM) during a study.

Ray Tune answers a stop by stopping the running trials, and its callbacks then see them end like
finished ones. The runner sets :data:`STOP` in its signal handler; the trials table, the MLflow
tracker and the searcher read it to mark trials that were cut short as ``interrupted`` (not
completed, not told to Optuna) so that ``sdsnn-search resume`` continues them. It is a module-level
object on purpose: the callbacks and the searcher are pickled into Ray's experiment state, and a
flag stored in them would come back set after a resume.
"""

from __future__ import annotations

from typing import Any, Mapping


class StopRequest:
    def __init__(self) -> None:
        self.count = 0

    @property
    def requested(self) -> bool:
        return self.count > 0

    def clear(self) -> None:
        self.count = 0


STOP = StopRequest()


def cut_short(result: Mapping[str, Any] | None, total_epochs: int) -> bool:
    """True when a stop was requested and this trial's last result is short of ``total_epochs``
    (and it did not end on a NaN loss, which is a finished outcome)."""
    r = result or {}
    if not STOP.requested or r.get("trial_status") == "nan":
        return False
    return int(r.get("epoch", 0) or 0) < int(total_epochs)


def ended_status(result: Mapping[str, Any] | None, total_epochs: int) -> str:
    """How a trial that Tune ended normally is recorded: ``interrupted`` (cut short by a stop
    request), ``nan`` (its loss diverged) or ``completed``."""
    if cut_short(result, total_epochs):
        return "interrupted"
    return "nan" if (result or {}).get("trial_status") == "nan" else "completed"
