"""Cost model of gradient averaging, its fit to sweep results, and the planner built on it."""
from .costmodel import CostModel, parse_rate, step_time

__all__ = ["CostModel", "parse_rate", "step_time"]
