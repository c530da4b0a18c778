"""Data-parallel training on CPU: two processes (torch.multiprocessing + gloo, the env torchrun would set).

Mechanics only: densenet_tiny at 64 px on 60 phantom images (see train_fixtures). Every write to the run directory
(checkpoints and the plain files) is recorded per rank, so the test sees that only rank 0 wrote.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from cxr.train.rundir import read_history
from tests.train.train_fixtures import make_small_phantom, tiny_config

HANG_GUARD_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, run_dir: str, log_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    from cxr.train import loop, prepare, rundir

    def recorded(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            with open(Path(log_dir) / f"rank{rank}.txt", "a") as fh:
                fh.write(f"{name}\n")
            return real(*args, **kwargs)
        setattr(module, name, wrapper)

    recorded(loop, "save_checkpoint")
    recorded(rundir, "write_json")
    recorded(rundir, "write_history")
    import cxr.train.splits as splits
    recorded(splits, "write_splits")
    summary = loop.train(tiny_config(Path(root), max_epochs=2), run_dir)
    with open(Path(log_dir) / f"summary{rank}.json", "w") as fh:
        json.dump({"world_size": summary["world_size"], "val_n": summary["metrics"]["val"]["n"],
                   "best_epoch": summary["best_epoch"]}, fh)
    del prepare


@pytest.mark.slow
def test_two_process_gloo_run_completes_and_only_rank0_writes(tmp_path):
    root = make_small_phantom(tmp_path / "phantom")
    run_dir, log_dir = tmp_path / "run", tmp_path / "calls"
    log_dir.mkdir()
    # fork: the children reuse the imported torch (spawn re-imports it, ~10 s per process on busy cores)
    procs = mp.start_processes(_worker, args=(2, _free_port(), str(root), str(run_dir), str(log_dir)), nprocs=2,
                               join=False, start_method="fork")
    deadline = time.monotonic() + HANG_GUARD_S
    while not procs.join(timeout=5):
        if time.monotonic() > deadline:  # a hang guard, not a speed check
            for p in procs.processes:
                p.kill()
            pytest.fail(f"2-process run did not finish within {HANG_GUARD_S} s")

    assert not (log_dir / "rank1.txt").exists(), (log_dir / "rank1.txt").read_text()
    writes = (log_dir / "rank0.txt").read_text().split()
    assert {"save_checkpoint", "write_json", "write_history", "write_splits"} <= set(writes)
    for name in ("config.json", "splits.csv", "history.csv", "best.pt", "last.pt", "metrics.json"):
        assert (run_dir / name).is_file(), name
    s0, s1 = (json.loads((log_dir / f"summary{r}.json").read_text()) for r in (0, 1))
    assert s0 == s1  # one decision, the same gathered metrics on both ranks
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert s0["val_n"] == metrics["data"]["n_val"]  # predictions gathered from both ranks, none counted twice
    assert [r["epoch"] for r in read_history(run_dir / "history.csv")] == [1, 2]
