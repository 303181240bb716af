"""What an experiment is, the list of them, and running one into an output directory."""

from __future__ import annotations

import importlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minillama.errors import MiniLlamaError

# Each module ends with `EXPERIMENTS = (Experiment(...), ...)`; the order here is the order of
# `minillama lab` and of docs/questions.md.
EXPERIMENT_MODULES = (
    "minillama.lab.attention",
    "minillama.lab.architecture",
    "minillama.lab.training",
)
LAB_KIND = "lab"  # the kind line of a lab output directory's checksum manifest


@dataclass
class LabResult:
    """What an experiment measured.

    `columns`/`rows` are the printed table; `conclusion` is the one-sentence answer the numbers
    support; `facts` are the named values the tests assert the conclusion on (JSON-serialisable);
    `figure` is the PNG written into the output directory, if any.
    """

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    conclusion: str
    facts: dict[str, Any] = field(default_factory=dict)
    figure: Path | None = None

    def table(self) -> str:
        """The rows as a Markdown table (numbers to 4 significant digits), ready for the docs."""
        cells = [[_format(v) for v in row] for row in self.rows]
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)


def _format(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and math.isfinite(value) and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value)


@dataclass(frozen=True)
class Experiment:
    """One question and the experiment that answers it.

    `run(out, quick)` returns a `LabResult`; `out` is the directory for its figure (None: draw
    nothing), `quick` asks for the smallest setting in which the conclusion still holds (the tests
    use it); the default setting is the one `minillama lab NAME` runs and the docs show.
    """

    name: str
    group: str
    question: str
    run: Callable[[Path | None, bool], LabResult]


def all_experiments() -> list[Experiment]:
    """Every experiment, in the order of `EXPERIMENT_MODULES`."""
    experiments = []
    for module in EXPERIMENT_MODULES:
        experiments.extend(importlib.import_module(module).EXPERIMENTS)
    return experiments


def find_experiment(name: str) -> Experiment:
    experiments = all_experiments()
    for experiment in experiments:
        if experiment.name == name:
            return experiment
    names = ", ".join(e.name for e in experiments)
    raise MiniLlamaError(f"no lab experiment named {name!r}; choose one of: {names}")


def run_experiment(experiment: Experiment, out: Path | None = None, quick: bool = False,
                   seed: int = 0) -> tuple[LabResult, float]:
    """Run one experiment with torch seeded, writing its figure and `NAME.json` (table, conclusion,
    facts) into `out` when given. Returns the result and the seconds it took."""
    import torch

    from minillama.files import atomic_write_text, update_manifest, write_manifest

    torch.manual_seed(seed)
    start = time.perf_counter()
    result = experiment.run(out, quick)
    seconds = time.perf_counter() - start
    if out is not None:
        record = {"name": experiment.name, "question": experiment.question, "columns": list(result.columns),
                  "rows": [list(row) for row in result.rows], "conclusion": result.conclusion,
                  "facts": result.facts, "seconds": round(seconds, 2)}
        atomic_write_text(out / f"{experiment.name}.json", json.dumps(record, indent=1, default=float) + "\n")
        written = [f"{experiment.name}.json"] + ([result.figure.name] if result.figure else [])
        if (out / "checksums.sha256").is_file():
            update_manifest(out, written)
        else:
            write_manifest(out, LAB_KIND)
    return result, seconds


def prepare_output(out: str | Path | None, overwrite: bool = False) -> Path | None:
    """The lab output directory, created: new, empty, or an earlier lab output (whose other
    experiments' files stay); anything else is refused (`OutputError`)."""
    if out is None:
        return None
    from minillama.files import check_output

    check_output(out, LAB_KIND, overwrite=overwrite)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out
