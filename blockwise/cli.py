"""The ``blockwise`` command. Thin: parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from blockwise.config import load_config
from blockwise.errors import BlockwiseError

logger = logging.getLogger("blockwise")


def _run(args: argparse.Namespace) -> int:
    from blockwise.runner import run

    config = load_config(args.config)
    if args.workers is not None:
        execution = config.execution.model_copy(update={"num_workers": args.workers})
        config = config.model_copy(update={"execution": execution})
    result = run(
        config,
        multiprocessing=not args.in_process,
        progress=not args.no_progress,
        adopt_store=args.adopt_store,
    )
    sys.stdout.write(result.summary() + "\n")
    report = config.run_dir / "evaluation.json"
    evaluated = any(s.name == "evaluate" and s.done + s.skipped == s.total for s in result.stages)
    if report.exists() and evaluated:
        from blockwise.report import format_report

        sys.stdout.write(format_report(report) + "\n")
    return 0 if result.ok else 1


def _plan(args: argparse.Namespace) -> int:
    from blockwise.plan import describe_plan

    sys.stdout.write(describe_plan(load_config(args.config)) + "\n")
    return 0


def _status(args: argparse.Namespace) -> int:
    from blockwise.status import describe_status

    sys.stdout.write(describe_status(load_config(args.config)) + "\n")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from blockwise.synthetic import synthesize_affinities_file

    synthesize_affinities_file(
        Path(args.labels), args.labels_dataset, Path(args.out), seed=args.seed
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb."""
    parser = argparse.ArgumentParser(
        prog="blockwise", description="Block-wise segmentation of EM volumes into neurons."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="run (or resume) every stage of a config")
    run.add_argument("config", help="the run's YAML config")
    run.add_argument("--workers", type=int, help="override execution.num_workers")
    run.add_argument("--in-process", action="store_true", help="no worker processes (debugging)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--adopt-store",
        action="store_true",
        help="accept a graph store that another run (another name) wrote",
    )
    run.set_defaults(func=_run)

    plan = verbs.add_parser("plan", help="dry run: blocks, ids, alignment and memory per block")
    plan.add_argument("config")
    plan.set_defaults(func=_plan)

    status = verbs.add_parser("status", help="blocks done per stage, nodes and edges in the store")
    status.add_argument("config")
    status.set_defaults(func=_status)

    synth = verbs.add_parser(
        "synth-affinities",
        help="TEST INPUT: predicted-looking affinities derived from labels (not a prediction)",
    )
    synth.add_argument("labels", help="HDF5 or zarr file with a label volume")
    synth.add_argument("out", help="zarr container to write (dataset 'affs')")
    synth.add_argument("--labels-dataset", default="labels")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``blockwise`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except BlockwiseError as e:
        logger.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
