"""A timeline of training in Chrome's Trace Event Format, and its per-step summary."""
from .recorder import NO_TRACE, Tracer

__all__ = ["NO_TRACE", "Tracer"]
