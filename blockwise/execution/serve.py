"""Running a run's daisy pipeline on daisy's distributed scheduler, in the driver.

``daisy.Server.run_blockwise`` starts every worker slot as a new interpreter
(``python -m daisy._subprocess_worker``) that calls the task's process
function there. For a local run whose workers the fork server starts, that
interpreter only asks the fork server for the worker program and waits for it:
about 0.15 s of start-up (interpreter, daisy, the process function's imports)
per slot and stage, on the critical path of every stage that cannot overlap
the one before, and CPU the workers need on a small machine. A process
function marked ``in_driver`` (:class:`~blockwise.execution.local.DriverSlot`)
is therefore handed to daisy's scheduler as it is, and daisy calls it in a
thread of the driver; every other task is wrapped as ``run_blockwise`` wraps it.

This uses daisy 2.0.0's scheduler entry point and its two task wrappers
(``daisy._daisy._run_distributed_server``, ``daisy._task``), the pieces its own
``Server.run_blockwise`` is made of; ``deploy/constraints.txt`` pins that release.
"""

from __future__ import annotations

from typing import Any


def serve_pipeline(pipeline: Any, progress: Any, host: str) -> dict[str, Any]:
    """Run ``pipeline`` to completion; daisy's ``task_id -> TaskState``.

    Args:
        pipeline: the run's daisy pipeline.
        progress: daisy's progress observer.
        host: the address the scheduler listens on.
    """
    import daisy._daisy as daisy_native
    from daisy import logging as daisy_logging
    from daisy._task import _to_pipeline, _wrap_for_subprocess_workers, _wrap_for_worker_logging

    pipeline = _to_pipeline(pipeline)  # one task alone is not a pipeline yet
    tasks = list(pipeline.tasks)
    prepared = [
        task
        if getattr(task.process_function, "in_driver", False)
        else _wrap_for_subprocess_workers(task)
        for task in tasks
    ]
    wrapped = [_wrap_for_worker_logging(task) for task in prepared]
    # the edges name the tasks as given: map them to their wrapped copies
    index = {id(task): wrapped[i] for i, task in enumerate(tasks)}
    edges = [(index[id(up)], index[id(down)]) for up, down in pipeline.edges]
    try:
        states, _ = daisy_native._run_distributed_server(
            daisy_native.Pipeline(wrapped, edges),
            None,
            progress,
            host=host,
            block_tracking=True,
        )
    finally:
        daisy_logging.close_all_log_files()
    return dict(states)
