"""`minillama lab [NAME | --all] [--out DIR]`: list the questions lab's experiments, or run them."""

from __future__ import annotations

import argparse

from minillama.options import add_output_option


def register(subparsers: argparse._SubParsersAction) -> None:
    lab = subparsers.add_parser(
        "lab", help="classic Transformer/LLM questions, each answered by a small experiment",
        description="The questions lab (docs/questions.md). With no NAME, list the experiments; with NAME, "
                    "run one (under a minute on 2 CPU cores): it prints a table and the answer the numbers "
                    "support, and with --out writes NAME.json and a figure.")
    lab.add_argument("name", nargs="?", metavar="NAME", help="the experiment to run (see the list)")
    lab.add_argument("--all", action="store_true", help="run every experiment, one after another")
    add_output_option(lab, "write NAME.json (table, answer, measured facts) and NAME.png here: a new or empty "
                           "directory, or an earlier lab output (its other files stay)", required=False,
                      overwrite_help="write into --out even if it holds files minillama did not write there")
    lab.add_argument("--quick", action="store_true",
                     help="the smallest setting in which each answer still holds (what the tests run)")
    lab.add_argument("--seed", type=int, default=0, help="torch seed (default: %(default)s)")
    lab.set_defaults(func=run_lab)


def run_lab(args: argparse.Namespace) -> int:
    from minillama.errors import MiniLlamaError
    from minillama.lab import all_experiments, find_experiment, run_experiment
    from minillama.lab.registry import prepare_output

    if args.all and args.name:
        raise MiniLlamaError("give an experiment NAME or --all, not both")
    if not args.all and not args.name:
        for experiment in all_experiments():
            print(f"{experiment.name:<24} [{experiment.group}] {experiment.question}")
        return 0
    experiments = all_experiments() if args.all else [find_experiment(args.name)]
    out = prepare_output(args.out, overwrite=args.overwrite)
    total = 0.0
    for experiment in experiments:
        print(f"## {experiment.name}: {experiment.question}\n")
        result, seconds = run_experiment(experiment, out, quick=args.quick, seed=args.seed)
        total += seconds
        print(result.table())
        print(f"\n{result.conclusion}")
        if result.figure:
            print(f"figure: {result.figure}")
        print(f"({seconds:.1f} s)\n")
    if len(experiments) > 1:
        print(f"{len(experiments)} experiments in {total:.0f} s")
    return 0
