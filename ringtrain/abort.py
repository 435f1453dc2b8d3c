"""Kept for scripts written against ringtrain 0.1 (``ringtrain.abort.run_or_abort``); the code is in fault/abort.py."""
from .fault.abort import run_or_abort

__all__ = ["run_or_abort"]
