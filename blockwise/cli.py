"""The ``blockwise`` command. Thin: parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from blockwise.errors import BlockwiseError

if TYPE_CHECKING:
    from blockwise.config import RunConfig
    from blockwise.execution.forkserver import ForkServer

logger = logging.getLogger("blockwise")


def _with_overrides(config: RunConfig, workers: int | None) -> RunConfig:
    """``config`` with command-line overrides, validated like the file itself."""
    from blockwise.config import parse_config

    if workers is None:
        return config
    data = config.model_dump(mode="json")
    data["execution"]["num_workers"] = workers
    return parse_config(data, f"{config.run_dir / 'config.yaml'} with --workers {workers}")


@contextmanager
def _sigterm_as_sigint() -> Iterator[list[int]]:
    """Within the block, SIGTERM (a cluster's or a user's kill) stops the run like Ctrl-C.

    daisy's scheduler blocks the main thread in native code and handles only
    SIGINT there (it stops scheduling, closes the scheduler, whose end the
    workers notice, and raises KeyboardInterrupt once every worker has exited);
    a Python SIGTERM handler would not run before the whole run ended. So
    SIGTERM is only noted by the C-level handler (through the wakeup fd), and a
    relay thread sends this process SIGINT.

    Yields:
        the SIGTERMs received so far (empty unless one came).
    """
    received: list[int] = []
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def relay() -> None:
        while data := os.read(read_fd, 64):
            if signal.SIGTERM in data:
                received.append(signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)

    # the Python-level handler does nothing: the relay thread acts, once
    previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    thread = threading.Thread(target=relay, name="sigterm-relay", daemon=True)
    thread.start()
    try:
        yield received
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGTERM, previous_handler)
        os.close(write_fd)
        thread.join(timeout=5)
        os.close(read_fd)


def _early_fork_server(args: argparse.Namespace) -> ForkServer | None:
    """The local profile's fork server, forked from the driver once its imports are done.

    It then starts with what workers import already in memory, and imports the
    rest while the driver checks the config and prepares the outputs
    (:class:`~blockwise.execution.forkserver._ForkedServer`). Started from a look
    at the YAML's ``execution.profile`` only; the config is validated afterwards
    as always, and a run that turns out not to use the server stops it
    (:func:`blockwise.runner.run`). None when the look finds another profile or
    cannot read the file (its error comes with the check).
    """
    if args.in_process:
        return None
    from blockwise.execution import forkserver, start_local_fork_server

    if not forkserver.enabled():
        return None
    import yaml

    try:
        data = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
        profile = (data.get("execution") or {}).get("profile", "local")
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        return None
    return start_local_fork_server(fork=True) if profile == "local" else None


def _run(args: argparse.Namespace) -> int:
    # the driver's imports first: the fork server is forked from this process after them
    from blockwise.config import load_config
    from blockwise.runner import RunInterrupted, run

    fork_server = _early_fork_server(args)
    try:
        config = _with_overrides(load_config(args.config), args.workers)
    except BaseException:
        if fork_server is not None:
            fork_server.stop(wait_s=0.0)
        raise
    # SIGTERM stops the run like Ctrl-C: workers are stopped, the summary so far
    # is printed with the command that resumes
    with _sigterm_as_sigint() as signals:
        try:
            result = run(
                config,
                multiprocessing=not args.in_process,
                progress=not args.no_progress,
                adopt_store=args.adopt_store,
                rerun_changed=args.rerun_changed,
                signals=signals,
                fork_server=fork_server,
            )
        except KeyboardInterrupt as e:
            if isinstance(e, RunInterrupted):
                sys.stdout.write(e.result.summary() + "\n")
            signum = signals[0] if signals else signal.SIGINT
            sys.stdout.write(
                f"\ninterrupted by {signal.Signals(signum).name}: finished blocks are kept; "
                f"resume with\n  blockwise run {args.config}\n"
            )
            sys.stdout.flush()
            return 128 + signum
    sys.stdout.write(result.summary() + "\n")
    report = config.run_dir / "evaluation.json"
    evaluated = any(s.name == "evaluate" and s.done + s.skipped == s.total for s in result.stages)
    if report.exists() and evaluated:
        from blockwise.report import format_report

        sys.stdout.write(format_report(report) + "\n")
    return 0 if result.ok else 1


def _reset(args: argparse.Namespace) -> int:
    from blockwise.config import load_config
    from blockwise.runner import reset

    cleared = reset(load_config(args.config), args.stage)
    if cleared:
        sys.stdout.write(f"cleared: {', '.join(cleared)}\n")
    else:
        sys.stdout.write("nothing to clear (no run directory)\n")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from blockwise.config import load_config
    from blockwise.plan import describe_plan, smoke_test

    config = load_config(args.config)
    sys.stdout.write(describe_plan(config) + "\n")
    if args.smoke:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="blockwise-smoke-") as scratch:
            sys.stdout.write(smoke_test(config, Path(scratch)) + "\n")
    return 0


def _status(args: argparse.Namespace) -> int:
    from blockwise.config import load_config
    from blockwise.status import describe_status

    text = describe_status(load_config(args.config), args.config, verify=args.verify)
    sys.stdout.write(text + "\n")
    return 0


def _train(args: argparse.Namespace) -> int:
    from blockwise.config import load
    from blockwise.train.config import TrainConfig
    from blockwise.train.trainer import describe_result, train

    result = train(
        load(args.config, TrainConfig), iterations=args.iterations, progress=not args.no_progress
    )
    sys.stdout.write(describe_result(result) + "\n")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from blockwise.synthetic import synthesize_affinities_file

    synthesize_affinities_file(
        Path(args.labels),
        args.labels_dataset,
        Path(args.out),
        seed=args.seed,
        overwrite=args.overwrite,
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from funlib.geometry import Roi

    from blockwise.evaluation import evaluate_volumes, parse_dataset_arg, write_evaluation
    from blockwise.report import format_evaluation
    from blockwise.volume import open_volume

    voxel_size = tuple(args.voxel_size) if args.voxel_size else None
    seg = open_volume(parse_dataset_arg(args.segmentation, args.seg_dataset), voxel_size)
    gt = open_volume(parse_dataset_arg(args.ground_truth, args.gt_dataset), voxel_size)
    roi = Roi(args.roi[:3], args.roi[3:]) if args.roi else None
    result = evaluate_volumes(seg, gt, roi, tuple(args.block_shape), top_k=args.top)
    out = Path(args.out)
    write_evaluation(result, out / "evaluation.json", out / "evaluation.png")
    sys.stdout.write(format_evaluation(result.to_json()) + "\n")
    sys.stdout.write(f"report: {out / 'evaluation.json'}  plot: {out / 'evaluation.png'}\n")
    return 0


def _view(args: argparse.Namespace) -> int:
    from blockwise.viewer import (
        open_viewer,
        resolve_run_dir,
        run_layers,
        serve_until_interrupted,
        stop_viewer,
        worst_selection,
    )

    run_dir = resolve_run_dir(Path(args.run))
    layers = run_layers(run_dir)
    selection = worst_selection(run_dir, layers) if args.segments == "worst" else None
    # "press Ctrl-C to stop" must hold even when this process was started with
    # SIGINT ignored (as a shell starts `cmd &` without job control, nohup or
    # CI scripts): the viewer serves until it is interrupted, so it listens
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        viewer = open_viewer(layers, selection, bind_address=args.bind, port=args.port)
        sys.stdout.write(f"{viewer.get_viewer_url()}\n")
        if selection is not None:
            sys.stdout.write(f"selected: {selection.description}\n")
        sys.stdout.write("serving; press Ctrl-C to stop\n")
        sys.stdout.flush()
        stopped = serve_until_interrupted()
    except KeyboardInterrupt:
        # Ctrl-C before the serving loop took over: stop just as cleanly
        logger.info("stopping the viewer")
        stopped = stop_viewer()
    if not stopped:
        # the server's threads (and its request executor, which the interpreter
        # would wait for at exit) still hold a connection: end without them
        sys.stdout.flush()
        logging.shutdown()
        os._exit(0)
    return 0


def _report(args: argparse.Namespace) -> int:
    from blockwise.report_html import write_report
    from blockwise.viewer import resolve_run_dir

    sys.stdout.write(f"{write_report(resolve_run_dir(Path(args.run)))}\n")
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
    run.add_argument("--workers", type=int, help="override execution.num_workers (>= 1)")
    run.add_argument("--in-process", action="store_true", help="no worker processes (debugging)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--adopt-store",
        action="store_true",
        help="accept a graph store that another run (another name) wrote",
    )
    run.add_argument(
        "--rerun-changed",
        action="store_true",
        help="recompute the stages whose config, inputs or code changed, and those downstream",
    )
    run.set_defaults(func=_run)

    reset = verbs.add_parser("reset", help="clear a stage and every stage downstream of it")
    reset.add_argument("config")
    reset.add_argument("stage", help="e.g. agglomerate")
    reset.set_defaults(func=_reset)

    plan = verbs.add_parser("plan", help="dry run: blocks, ids, alignment and memory per block")
    plan.add_argument("config")
    plan.add_argument(
        "--smoke",
        action="store_true",
        help="also run the first block of each stage in-process, in a scratch directory",
    )
    plan.set_defaults(func=_plan)

    status = verbs.add_parser("status", help="blocks done per stage, nodes and edges in the store")
    status.add_argument("config")
    status.add_argument(
        "--verify",
        action="store_true",
        help="also read every output chunk of every finished block and check the graph store",
    )
    status.set_defaults(func=_status)

    train = verbs.add_parser(
        "train", help="train (or resume training) the affinity U-Net of a training config"
    )
    train.add_argument("config", help="the training's YAML config")
    train.add_argument(
        "--iterations", type=int, help="train up to this many iterations in total (resumes)"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    synth = verbs.add_parser(
        "synth-affinities",
        help="TEST INPUT: predicted-looking affinities derived from labels (not a prediction)",
    )
    synth.add_argument("labels", help="HDF5 or zarr file with a label volume")
    synth.add_argument("out", help="zarr container to write (dataset 'affs')")
    synth.add_argument("--labels-dataset", default="labels")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--overwrite",
        action="store_true",
        help="replace 'affs' and 'labels' if the container already has them",
    )
    synth.set_defaults(func=_synth)

    evaluate = verbs.add_parser(
        "evaluate",
        help="VOI split/merge, adapted Rand error and the worst objects of a segmentation",
    )
    evaluate.add_argument(
        "segmentation", help="FILE:DATASET (zarr or HDF5), or FILE with --seg-dataset"
    )
    evaluate.add_argument(
        "ground_truth", help="FILE:DATASET, or FILE with --gt-dataset; label 0 is ignored"
    )
    evaluate.add_argument("--seg-dataset", help="the segmentation's dataset inside its file")
    evaluate.add_argument("--gt-dataset", help="the ground truth's dataset inside its file")
    evaluate.add_argument(
        "--roi", type=int, nargs=6, metavar="NM", help="OFFSET_Z Y X SHAPE_Z Y X (nm) to score"
    )
    evaluate.add_argument(
        "--block-shape",
        type=int,
        nargs=3,
        default=[128, 128, 128],
        metavar="VX",
        help="voxels read at once (z y x)",
    )
    evaluate.add_argument(
        "--voxel-size",
        type=int,
        nargs=3,
        metavar="NM",
        help="voxel size of files that state none (a file that states one must agree)",
    )
    evaluate.add_argument("--top", type=int, default=10, help="worst objects listed per kind")
    evaluate.add_argument("--out", default=".", help="folder for evaluation.json and .png")
    evaluate.set_defaults(func=_evaluate)

    view = verbs.add_parser("view", help="look at a run's inputs and outputs in neuroglancer")
    view.add_argument("run", help="the run directory, or its config")
    view.add_argument("--bind", default="127.0.0.1", help="address to listen on (loopback)")
    view.add_argument("--port", type=int, default=0, help="port; 0 for any free one")
    view.add_argument(
        "--segments",
        choices=["worst", "none"],
        default="none",
        help="worst: select the largest split and merge errors of evaluation.json",
    )
    view.set_defaults(func=_view)

    report = verbs.add_parser("report", help="write RUN_DIR/report.html (one static page)")
    report.add_argument("run", help="the run directory, or its config")
    report.set_defaults(func=_report)
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


def entry() -> NoReturn:
    """The console script: :func:`main`, then exit without the interpreter's teardown.

    Two costs of a process that does no numerical work itself and ends as soon
    as its run is written:

    * numpy's OpenBLAS starts a thread per core at import, and the idle threads
      spin for about 0.08 CPU-seconds; blockwise does no linear algebra with
      numpy, and on a small node that time is taken from the workers. numpy's
      BLAS gets one thread unless ``OPENBLAS_NUM_THREADS`` is set (torch has its
      own threads and is not affected).
    * tearing the interpreter down (module by module, with garbage collections
      over everything the run imported) took about 0.1 s after the summary. Once
      :func:`main` has returned, every output is written (the store commits
      before a stage ends, arrays are written block by block), so the process
      waits for its non-daemon threads, runs the ``atexit`` handlers (logging's
      flush among them), flushes stdout and stderr and exits with ``os._exit``.
      An exception leaves through the normal teardown, and so does a process
      under a profiler or tracer (``python -m cProfile``, coverage), which
      writes its results after the command returns.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    code = main()
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # closed, or a broken pipe: nothing more can be said
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
