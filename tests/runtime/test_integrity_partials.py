"""Issue 12 item 3: a completed run removes only the `.partial` files its own folder, model and settings kept; an
unrelated interrupted run's rows (another folder on the same --out) stay, and the run names them."""

from __future__ import annotations

import json

import pytest

from cxr.runtime.results import ResultsWriter, partial_path, read_sidecar, sidecar_path
from cxr.runtime.scoring import ScoreRow

MINE = {"folder": "/scans/a", "model_sha256": "ab" * 32, "threshold": 0.5}


def _interrupted(out, identity, names=("1.png",)):
    with pytest.raises(KeyboardInterrupt):
        with ResultsWriter(out, identity=identity) as writer:
            for name in names:
                writer.write(ScoreRow(name, "ok", probability=0.25, label_pred=0))
            raise KeyboardInterrupt
    return writer.partial


def test_a_kept_partial_records_who_kept_it(tmp_path):
    partial = _interrupted(tmp_path / "r.csv", MINE)
    assert partial == partial_path(tmp_path / "r.csv")
    assert json.loads(sidecar_path(partial).read_text()) == {"identity": MINE}
    assert read_sidecar(partial) == MINE


@pytest.mark.parametrize("theirs", [
    {**MINE, "folder": "/scans/b"},  # another folder, same --out: the case that lost data
    {**MINE, "model_sha256": "cd" * 32},
    {**MINE, "threshold": 0.4},
    None,  # kept by an older cxr, which recorded nothing: cannot be told, so it stays
])
def test_a_completed_run_leaves_another_runs_partial(tmp_path, theirs):
    out = tmp_path / "r.csv"
    other = _interrupted(out, {"placeholder": 1}, names=("x.png", "y.png"))
    if theirs is None:
        sidecar_path(other).unlink()
    else:
        sidecar_path(other).write_text(json.dumps({"identity": theirs}))
    mine = _interrupted(out, MINE)
    assert mine == partial_path(out, 2)
    with ResultsWriter(out, identity=MINE) as writer:
        writer.write(ScoreRow("1.png", "ok", probability=0.25, label_pred=0))
        writer.commit()
    assert writer.removed_partials == [mine] and not mine.exists() and not sidecar_path(mine).exists()
    assert writer.kept_partials == [other]
    assert other.read_text().splitlines()[1:] == ["x.png,0.250000,0,ok,", "y.png,0.250000,0,ok,"]


def test_a_writer_without_identity_removes_nothing(tmp_path):
    out = tmp_path / "r.csv"
    partial = _interrupted(out, MINE)
    with ResultsWriter(out) as writer:
        writer.commit()
    assert partial.exists() and writer.kept_partials == [partial] and writer.removed_partials == []
