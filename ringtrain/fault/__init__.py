"""Preemption signals, collective deadlines and exit codes."""
from .exit_codes import EXIT_ERROR, EXIT_PREEMPTED, EXIT_TIMEOUT
from .signals import PreemptionSignals
from .watchdog import Watchdog

__all__ = ["EXIT_ERROR", "EXIT_PREEMPTED", "EXIT_TIMEOUT", "PreemptionSignals", "Watchdog"]
