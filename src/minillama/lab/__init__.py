"""The questions lab: each classic Transformer/LLM question answered by a small experiment that runs
on a laptop CPU in under a minute, prints a table, draws a figure where one says more, and whose
conclusion a test asserts (tests/test_lab_*.py), so the answers in docs/questions.md cannot drift
from the code."""

from minillama.lab.registry import Experiment, LabResult, all_experiments, find_experiment, run_experiment

__all__ = ["Experiment", "LabResult", "all_experiments", "find_experiment", "run_experiment"]
