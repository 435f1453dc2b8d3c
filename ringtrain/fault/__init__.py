"""Everything about jobs that fail or are stopped: errors, exit codes, signals, deadlines, aborts, restarts.

- ``errors``: one-line errors (bad input: exit 2; a diverged loss: 3), agreed across ranks.
- ``abort``: ``run_or_abort``, so that no rank waits forever for one that failed.
- ``signals``: preemption signals, agreed at the step boundary; ``Preempted`` (exit 75).
- ``watchdog``: deadlines on every wait for the peers (exit 76).
- ``world_size``: the check that catches N singletons started by a wrong PMI setting.
- ``supervise``: ``python -m ringtrain launch``, restarts from the last checkpoint.
- ``exit_codes``: every code, and what it means.
"""
from .abort import abort_on_uncaught_exception, run_or_abort
from .errors import Diverged, OneLineError, ResourceError, UsageError, agree, checked
from .exit_codes import EXIT_DIVERGED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PREEMPTED, EXIT_TIMEOUT, EXIT_USAGE
from .signals import Preempted, PreemptionSignals, agree_at_step_end
from .watchdog import Watchdog
from .world_size import check_world_size

__all__ = ["EXIT_DIVERGED", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_PREEMPTED", "EXIT_TIMEOUT", "EXIT_USAGE",
           "Diverged", "OneLineError", "Preempted", "PreemptionSignals", "ResourceError", "UsageError", "Watchdog", "agree",
           "abort_on_uncaught_exception", "agree_at_step_end", "check_world_size", "checked", "run_or_abort"]
