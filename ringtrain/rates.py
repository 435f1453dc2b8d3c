"""Link rates in tc's notation (``100mbit``, ``1gbit``): what ``--link`` takes and result files record.

Below both readers of a rate, the result files (results.py) and the cost model
(plan/costmodel.py), so that neither imports the other's layer.

>>> parse_rate("2.5gbit")
2500000000.0
"""
import math


def parse_rate(text: str) -> float:
    """Bits per second from tc's notation: ``100mbit``, ``1gbit``, ``2.5gbit``, ``400kbit``."""
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12, "bit": 1.0}
    t = str(text).strip().lower()
    for unit, scale in units.items():
        if t.endswith(unit):
            try:
                value = float(t[:-len(unit)])
            except ValueError:
                break
            if math.isfinite(value) and value > 0:
                return value * scale
            break
    raise ValueError(f"a link rate looks like 100mbit, 1gbit or 10gbit (bits per second), got {text!r}")
