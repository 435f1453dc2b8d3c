"""The README's ringtrain.fit example runs as written, at 2 ranks, and a second run resumes from its checkpoint;
the digits example trains to high accuracy through the command line."""
import json
import os
import re

import pytest

from tests.launch import run_mpi

ROOT = os.path.dirname(os.path.dirname(__file__))


def readme_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    found = re.search(r"<!-- fit-example:[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert found, "README.md lost its fit example"
    return found.group(1)


def test_the_readme_fit_example_runs_and_resumes(tmp_path):
    (tmp_path / "classify.py").write_text(readme_example())
    env = {**os.environ, "PYTHONPATH": ROOT}
    first = run_mpi(2, ["-m", "mpi4py", "classify.py"], timeout=300, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "800 training samples (25 micro-steps per epoch), 200 for validation | 5 epochs = 125 steps" in first.stdout
    assert "step 125/125 | epoch 5.00" in first.stdout
    rows = [json.loads(line) for line in open(tmp_path / "runs/classify/metrics.jsonl")]
    assert [r["step"] for r in rows if "val_accuracy" in r] == [25, 50, 75, 100, 125]
    again = run_mpi(2, ["-m", "mpi4py", "classify.py"], timeout=300, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert "resumed from the checkpoint at step 125" in again.stdout and "nothing to do" in again.stdout


def test_the_digits_example_learns(tmp_path):
    pytest.importorskip("sklearn")
    out = run_mpi(3, ["-m", "ringtrain", "train", "--model", "ringtrain.examples.digits:task", "--epochs", "6",
                      "--eval-every", "0", "--out-dir", str(tmp_path)], timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    end = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")][-1]
    assert end["event"] == "end" and end["val_accuracy"] >= 0.95, end
