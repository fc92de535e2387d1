"""The long-run benchmark in short: a few thousand steps logged to W&B every step, memory flat.

``python -m benchmarks.soak`` runs 100,000 steps (its figure is in the README); this runs the
same code for 1,600 and applies its growth checks to what the monitor and W&B's SDK hold (not
to time per step: a test machine is too noisy for that over seconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.soak import failures, growth, soak


@pytest.mark.slow
def test_a_short_soak_keeps_memory_flat(tmp_path: Path, wandb_offline: Any) -> None:
    threads = torch.get_num_threads()
    try:
        windows, escalations = soak(1600, 4, sync_every=None, trace=True, wandb_dir=tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert escalations == 0 and [w.end for w in windows] == [400, 800, 1200, 1600]
    g = growth(windows)
    # What the monitor and W&B's SDK hold (the objects of the whole process also hold torch's
    # and pytest's warm-up, which the long run outgrows).
    checked = [f for f in failures(g, steps=1200, traced=True) if not f.startswith(("time per step", "gc objects"))]
    assert checked == [], g
    assert windows[-1].monitor_tensors == 0 and windows[-1].waiting_rows == 0 and windows[-1].gradema_kib > 0
