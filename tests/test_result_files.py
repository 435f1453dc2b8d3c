"""Every JSON file under benchmarks/results/ is read by ringtrain's own reader: a benchmark result through
``load_result``, which refuses any other shape; the fitted cost models and the Chrome traces by theirs."""
import glob
import os
import re

import pytest

from ringtrain.plan.costmodel import CostModel
from ringtrain.results import load_result
from ringtrain.trace.summary import load_events

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results")
FILES = sorted(os.path.relpath(p, RESULTS) for p in glob.glob(os.path.join(RESULTS, "**", "*.json"), recursive=True))


def is_cost_model(name: str) -> bool:
    return os.path.basename(name) == "costmodel.json"


def is_trace(name: str) -> bool:
    """Timelines that ``train --trace`` wrote (trace_n4_spin.json), not the trace benchmark's overhead."""
    return re.fullmatch(r"trace_n\d+_\w+\.json", os.path.basename(name)) is not None


@pytest.mark.parametrize("name", FILES)
def test_every_file_loads_through_its_reader(name):
    path = os.path.join(RESULTS, name)
    if is_cost_model(name):
        assert isinstance(CostModel.load(path), CostModel)
    elif is_trace(name):
        assert load_events(path)
    else:
        assert load_result(path)["benchmark"]


@pytest.mark.parametrize("name, benchmark", [("overlap/trace_overhead.json", "trace_overhead"),
                                             ("overlap/buffer_sync_cost.json", "buffer_sync_cost"),
                                             ("dataset/dataset_overhead.json", "dataset_overhead")])
def test_the_overheads_once_written_bare_are_results_now(name, benchmark):
    # Their writers use write_result now; the stored files were converted by benchmarks/convert_results.py.
    assert name in FILES and not is_cost_model(name) and not is_trace(name)
    assert load_result(os.path.join(RESULTS, name))["benchmark"] == benchmark


def test_result_files_are_named_after_what_they_measure():
    # "old", "new" or a session number mean something only on the day they were written.
    history = re.compile(r"(?:^|_)(?:old|new|before|after|session\d*)(?=_|\.json$)")
    named_after_history = [name for name in FILES if history.search(os.path.basename(name))]
    assert not named_after_history, f"rename these after what they measure: {named_after_history}"
