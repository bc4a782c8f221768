"""Scripted jobs for the simulators: field changes at set moments, applied when the job is read.

`RulerSim` and `ImmutaSim` both let a test schedule a job's changes (``[(0.5, {"status":
"complete"})]``). No task runs in the background: each time a job is read its due steps are
handed back, in order, with the wall time each was scheduled for, and the simulator applies
them as it applies a `set_job` (so a completion time is the step's, not the read's).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

#: One step: seconds after the script starts, and the fields it sets.
Step = tuple[float, dict[str, Any]]


def ordered_steps(
    steps: Iterable[tuple[float, Mapping[str, Any]]], check: Callable[[Iterable[str]], None]
) -> deque[Step]:
    """`steps` sorted by time, each one's field names passed to `check` (which raises on an
    unknown one), so that a bad script fails when it is given, not when it is read."""
    ordered = sorted(((float(at), dict(fields)) for at, fields in steps), key=lambda s: s[0])
    for _, fields in ordered:
        check(fields)
    return deque(ordered)


@dataclass
class Script:
    """The steps a job has still to take, timed from `start` on the simulator's clock.

    `wall` is the wall time at `start`: a step's wall time is `wall` plus its offset.
    """

    steps: deque[Step] = field(default_factory=deque)
    start: float = 0.0
    wall: datetime = field(default_factory=lambda: datetime.now(UTC))

    def due(self, clock: Callable[[], float]) -> Iterator[tuple[dict[str, Any], datetime]]:
        """Take the steps due now on `clock` (the one `start` was read from), oldest first:
        each step's fields and the wall time it was scheduled for.

        The clock is read once, and only for a script with steps left: most jobs have none.
        """
        if not self.steps:
            return
        elapsed = clock() - self.start
        while self.steps and self.steps[0][0] <= elapsed:
            at, fields = self.steps.popleft()
            yield fields, self.wall + timedelta(seconds=at)
