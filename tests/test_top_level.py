"""The names ``import ringtrain`` offers: each one importable, each one listed by ``dir``, torch left unloaded."""
import os
import subprocess
import sys

import ringtrain
from ringtrain import fault

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_public_name_is_importable_and_listed():
    missing = [name for name in ringtrain.__all__ if not hasattr(ringtrain, name)]
    unlisted = sorted(set(ringtrain.__all__) - set(dir(ringtrain)))
    assert not missing and not unlisted, (missing, unlisted)


def test_what_fit_raises_and_dgc_adam_are_at_the_top_level():
    from ringtrain import DGCAdam, Diverged, Preempted, UsageError
    assert (UsageError, Preempted, Diverged) == (fault.UsageError, fault.Preempted, fault.Diverged)
    assert DGCAdam.__name__ == "DGCAdam" and issubclass(Diverged, Exception)


def test_lazy_names_tab_complete_before_torch_is_loaded():
    # A fresh interpreter: this one has long imported torch.
    probe = ("import sys, ringtrain; names = dir(ringtrain); "
             "print(' '.join(n for n in ('fit', 'GradientReducer', 'DGCAdam', 'TrainConfig') if n in names)); "
             "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout.split("\n")
    assert out[0].split() == ["fit", "GradientReducer", "DGCAdam", "TrainConfig"]
    assert out[1] == "False"
