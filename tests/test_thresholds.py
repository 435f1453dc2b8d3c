"""The one table of thresholds: every automatic choice reads it, at its edges."""
import dataclasses

import pytest

import ringtrain
from ringtrain.collectives import thresholds
from ringtrain.collectives.thresholds import Thresholds, choose_algorithm, choose_broadcast

TABLE = Thresholds(ring_min_bytes=1000, hierarchical_min_bytes=100, chain_min_bytes=10)


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setattr(thresholds, "THRESHOLDS", TABLE)


def test_the_table_comes_from_the_environment_with_defaults_for_what_is_unset_or_bad():
    read = Thresholds.from_environment({"RINGTRAIN_RING_MIN_BYTES": "4096", "RINGTRAIN_CHAIN_MIN_BYTES": "lots"})
    assert read == Thresholds(ring_min_bytes=4096, hierarchical_min_bytes=1 << 20, chain_min_bytes=1 << 20)


@pytest.mark.parametrize("nbytes, size, two_level, expected", [
    (999, 2, False, "mpi"), (1000, 2, False, "ring"),
    (99, 4, True, "mpi"), (100, 4, True, "hierarchical"), (1000, 4, True, "hierarchical"),
    (100, 4, None, "hierarchical"), (99, 4, None, "mpi"), (1000, 4, None, "hierarchical"),
    (1 << 30, 1, True, "mpi"), (1 << 30, 1, None, "mpi"),
])
def test_allreduces_choice_switches_at_the_tables_sizes(table, nbytes, size, two_level, expected):
    assert choose_algorithm(nbytes, size, two_level=two_level) == expected


def test_a_ring_threshold_given_per_call_replaces_the_tables(table):
    assert (choose_algorithm(10, 2, ring_min_bytes=10), choose_algorithm(9, 2, ring_min_bytes=10)) == ("ring", "mpi")


def test_broadcasts_choice_switches_at_the_tables_size(table):
    assert (choose_broadcast(9), choose_broadcast(10)) == ("mpi", "chain")


def test_the_public_names_still_answer():
    from ringtrain.collectives.api import choose_algorithm as from_api
    assert ringtrain.choose_algorithm is choose_algorithm is from_api
    assert ringtrain.ALGORITHMS == ("auto", "ring", "recursive_doubling", "ps", "mpi", "hierarchical")


def test_the_table_cannot_be_changed_in_place():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TABLE.ring_min_bytes = 0
