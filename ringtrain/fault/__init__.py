"""Preemption signals, collective deadlines, user errors and exit codes."""
from .errors import Diverged, OneLineError, UsageError, agree, checked
from .exit_codes import EXIT_DIVERGED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PREEMPTED, EXIT_TIMEOUT, EXIT_USAGE
from .signals import PreemptionSignals
from .watchdog import Watchdog

__all__ = ["EXIT_DIVERGED", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_PREEMPTED", "EXIT_TIMEOUT", "EXIT_USAGE",
           "Diverged", "OneLineError", "PreemptionSignals", "UsageError", "Watchdog", "agree", "checked"]
