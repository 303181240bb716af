"""The questions lab's frame: listing, running into an output directory, refusing foreign output."""

from __future__ import annotations

import json

from minillama.cli import main
from minillama.lab import all_experiments


def test_every_experiment_has_a_unique_name_a_question_and_a_group():
    experiments = all_experiments()
    names = [e.name for e in experiments]
    assert len(names) == len(set(names))
    assert all(e.question.endswith("?") and e.group for e in experiments)


def test_lab_lists_and_runs_one_experiment_into_out(tmp_path, capsys):
    assert main(["lab"]) == 0
    assert "attention-scaling" in capsys.readouterr().out
    out = tmp_path / "lab"
    assert main(["lab", "attention-scaling", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| d_k |" in printed and "sqrt(d_k)" in printed
    record = json.loads((out / "attention-scaling.json").read_text())
    assert record["conclusion"] in printed and record["facts"]["dims"]
    assert (out / "checksums.sha256").read_text().startswith("# minillama lab")


def test_lab_refuses_an_unknown_name_and_a_foreign_out(tmp_path, capsys):
    assert main(["lab", "no-such-question"]) == 2
    assert "attention-scaling" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["lab", "attention-scaling", "--quick", "--out", str(tmp_path)]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_every_experiment_has_its_answer_in_the_docs():
    """docs/questions.md (and its Chinese twin) shows each experiment's command, its answer beside it."""
    from pathlib import Path

    for page in ("questions.md", "questions.zh-CN.md"):
        docs = (Path(__file__).resolve().parents[1] / "docs" / page).read_text(encoding="utf-8")
        missing = [e.name for e in all_experiments() if f"minillama lab {e.name}" not in docs]
        assert not missing, page
