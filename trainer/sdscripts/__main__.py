"""`python -m anima_lora_flow.trainer.sdscripts --job J --events E`: sd-scripts behind the same event protocol.

The flow supervises every backend the same way (a process group writing JSON-lines events); this
entry installs sd-scripts if needed, writes its TOML files, launches it and turns its console into
those events. Exit codes match the native trainer: 0 done, 1 error, 2 bad input, 3 stopped on request.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ...config import TrainingConfig, cache_root
from ...core.lora_files import lora_file_name
from ...core.train_items import TrainItem
from ...errors import UserInputError, setting
from ..backend import EXIT_DONE, EXIT_ERROR, EXIT_STOPPED, EXIT_USER, TrainJob
from ..events import Checkpoint, Done, Error, Event, JsonLinesSink, Log, Stopped, emit
from .backend import SdScriptsBackend
from .install import SdScriptsInstallError, ensure_sd_scripts
from .launch import SdScriptsFailed, run_sd_scripts
from .prepare import prepare_sd_scripts_run
from .resume import fix_train_state, write_validation_history
from .samples import SampleCollector, run_prompts


def run_job(job: TrainJob, events: Path) -> int:
    """Run one sd-scripts session described by `job` (prepared by the runner through backend.SdScriptsBackend)."""
    sink = JsonLinesSink(events)
    config = TrainingConfig(**job.config)
    stop = {"requested": False}

    def request_stop(_signum, _frame):
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    try:
        sd_dir = Path(job.tool_dir) if job.tool_dir else ensure_sd_scripts(
            config.sd_scripts_commit, Path(job.cache_dir or cache_root())
        )
        resume = job.resume_state
        if resume:
            # sd-scripts writes in-epoch step numbers after a resume; put the absolute step back first.
            fix_train_state(resume, step=job.resume_step)
        output_dir = Path(job.output_dir)
        prompts = run_prompts(config, [TrainItem.from_json(item) for item in job.items])
        prepared = prepare_sd_scripts_run(
            config, run_id=job.run_id, image_dir=job.dataset_dir, dit=job.dit, qwen3=job.text_encoder,
            vae=job.vae, sd_scripts_dir=sd_dir, config_dir=Path(job.run_dir) / "configs", output_dir=output_dir,
            mixed_precision=job.precision or "bf16", total_steps=job.total_steps, resume_dir=resume, subsets=job.subsets,
            prompts=prompts, validation_subsets=job.validation_subsets,
        )
        emit(sink, Log(message=f"sd-scripts: {prepared.command_text}"))
        parser = SdScriptsBackend().parse_events(job)
        if prompts:
            parser.on_samples = SampleCollector(prompts, output_dir, config.project_name, config.max_train_epochs)
        elif config.sample_every_n_epochs:  # the dataset has no caption, and sd-scripts reads no empty prompt line
            emit(sink, Log(message="no sample images: the dataset has no caption to use as a prompt and sd-scripts "
                                   f"cannot sample an empty one; give a prompt file ({setting('sample_prompts')})", level="warning"))  # fmt: skip
        if not job.validation_subsets:
            emit(sink, Log(message="sd-scripts measures no validation loss in this run: no validation images were staged "
                                   "for it", level="warning"))  # fmt: skip
        result = run_sd_scripts(
            prepared.command, sink=_keeping_validation(sink, parser), stop_requested=lambda: stop["requested"],
            echo=_quiet, parser=parser, config=config, gpu_memory_gib=job.gpu_memory_gib,
        )
    except (UserInputError, SdScriptsInstallError) as exc:
        emit(sink, Error(message=str(exc)))
        return EXIT_USER if isinstance(exc, UserInputError) else EXIT_ERROR
    except SdScriptsFailed as exc:
        emit(sink, Error(message=str(exc)))
        return EXIT_ERROR
    if result.stopped:
        emit(sink, Stopped(reason="requested"))
        return EXIT_STOPPED
    final = SdScriptsBackend().outputs(output_dir, config.project_name).final_lora
    if final is None:
        emit(sink, Error(message=f"sd-scripts exited cleanly but wrote no {lora_file_name(config.project_name)}"))
        return EXIT_ERROR
    emit(sink, Done(lora=str(final), step=job.total_steps or result.last_step))
    return EXIT_DONE


def _keeping_validation(sink, parser):
    """The sink, after saving the validation losses so far into each state folder as it is reported
    (before the runner copies it), so a run resumed from that state knows its best epoch."""

    def forward(event: Event) -> None:
        if isinstance(event, Checkpoint) and event.kind == "state" and parser.validation_history:
            write_validation_history(event.path, parser.validation_history)
        sink(event)

    return forward


def _quiet(_text: str, end: str = "\n") -> None:
    """The flow draws progress from events; sd-scripts' own console goes to the trainer log only."""
    sys.stdout.write(_text + end)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anima_lora_flow.trainer.sdscripts")
    parser.add_argument("--job", required=True)
    parser.add_argument("--events", required=True)
    args = parser.parse_args(argv)
    return run_job(TrainJob.load(Path(args.job)), Path(args.events))


if __name__ == "__main__":
    sys.exit(main())
