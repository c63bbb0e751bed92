"""`python -m anima_lora_flow.trainer --job job.json --events events.jsonl`: the native trainer as a subprocess.

Exit codes: 0 done, 1 error, 2 bad input, 3 stopped on request (SIGTERM/SIGINT, or the --stop-file
appeared) with a state saved. A job with num_gpus > 1 starts one process per GPU (data_parallel.py)
and exits with their merged code.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback

from .backend import EXIT_DONE, EXIT_ERROR, EXIT_STOPPED, EXIT_USER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anima_lora_flow.trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="TrainJob JSON file")
    parser.add_argument("--events", required=True, help="file to append JSON-lines events to")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar on stderr")
    parser.add_argument(
        "--stop-file", metavar="PATH",
        help="stop like SIGTERM (finish the step, save a state, exit 3) once this file exists; checked every step, "
        "never deleted by the trainer (remove it before resuming)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from ..errors import UserInputError

    from .data_parallel import is_worker, launch_workers
    from .events import Error, JsonLinesSink, emit
    from .loop import TrainingDivergedError
    from .run import TrainJob, run_training

    try:
        job = TrainJob.load(args.job)
    except (OSError, ValueError, TypeError) as e:
        print(f"error: cannot read the job file {args.job}: {e}", file=sys.stderr)
        return EXIT_USER
    num_processes = int(job.config.get("num_gpus", 1))
    if num_processes > 1 and not is_worker():
        return launch_workers([sys.executable, "-m", "anima_lora_flow.trainer", *(sys.argv[1:] if argv is None else argv)], num_processes)
    main_process = int(os.environ.get("RANK", "0")) == 0

    # A signal only sets a flag: the loop saves a state at the end of the current step and stops.
    signals: list[str] = []

    def request_stop(signum, _frame):
        signals.append(signal.Signals(signum).name)
        signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C / SIGTERM kills at once

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    if args.stop_file and os.path.exists(args.stop_file) and main_process:
        print(f"warning: the stop file {args.stop_file} already exists: the run will stop after one step", file=sys.stderr)

    def stop_requested() -> str | bool:
        if signals:
            return signals[0]
        return "stop file" if args.stop_file and os.path.exists(args.stop_file) else False  # one stat per step

    sink = JsonLinesSink(args.events)  # every process may report its error; only process 0 reports progress
    try:
        result = run_training(
            job, sink if main_process else None, stop_requested=stop_requested, show_progress=main_process and not args.no_progress
        )
    except UserInputError as e:
        emit(sink, Error(message=e.template, kind="user"))  # placeholders: the supervisor's reader spells them
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER
    except TrainingDivergedError as e:  # its message is the whole story: no traceback
        emit(sink, Error(message=e.template, kind="diverged"))
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - reported as an event, then a non-zero exit
        emit(sink, Error(message=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()))
        traceback.print_exc()
        return EXIT_ERROR
    finally:
        sink.close()
        _leave_process_group()
    if not main_process:
        return EXIT_STOPPED if result.stopped else EXIT_DONE
    if result.stopped:
        print(f"stopped at step {result.steps}/{result.total_steps}; state saved in {result.state}", file=sys.stderr)
        return EXIT_STOPPED
    print(f"done: {result.final_lora}", file=sys.stderr)
    return EXIT_DONE


def _leave_process_group() -> None:
    """Shut the data-parallel group down before the interpreter exits.

    Left to the C++ static destructors at exit, a worker that had already saved its state and
    returned its exit code sometimes aborted instead ("terminate called without an active exception",
    exit 134): the group's threads were still joinable when the process ended.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
