"""The README's DDP example runs as written under mpiexec, with and without torch's store barrier after init."""
import os
import re

import pytest

from tests.launch import run_mpi

ROOT = os.path.dirname(os.path.dirname(__file__))


def readme_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        found = re.search(r"<!-- ddp-example:[^>]*-->\n```python\n(.*?)```", f.read(), re.S)
    assert found, "README.md lost its DDP example"
    return found.group(1)


@pytest.mark.parametrize("ranks, barrier", [(2, "0"), (3, "1")])
def test_the_readme_ddp_example_trains_over_the_ringtrain_backend(tmp_path, ranks, barrier):
    (tmp_path / "ddp_example.py").write_text(readme_example())
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=ROOT, TORCH_DIST_INIT_BARRIER=barrier)
    out = run_mpi(ranks, ["ddp_example.py"], timeout=180, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    found = re.search(rf"^{ranks} ranks, step 100: loss ([0-9.]+)$", out.stdout, re.M)
    assert found and float(found.group(1)) < 1e-3, out.stdout
