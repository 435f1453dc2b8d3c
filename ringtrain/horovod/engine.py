"""Placeholder: the collectives' engine (being written)."""


def _stop_engine() -> None:
    """Stop the engine's thread, if it runs."""
