"""Wording shared by the runner, the trainer's log, `status` and the console: durations and epoch positions."""

from __future__ import annotations


def epoch_position(epochs_done: int | None, step_in_epoch: int | None = None, epochs: int | None = None) -> str:
    """Where a step stands among the epochs, 1-based: "after epoch 2 of 2", "in epoch 4 of 10".

    The one wording for the runner's resume line, the trainer's log and `status`: a state's manifest
    and the trainer's progress record both count finished epochs, which read one lower than the epoch
    in progress. Without `step_in_epoch` it cannot tell an epoch's end from its middle, so it says
    only what is done.
    """
    if epochs_done is None:
        return ""
    of = f" of {epochs}" if epochs else ""
    if step_in_epoch is None:
        return f"{epochs_done}{of} epoch{'' if (epochs or epochs_done) == 1 else 's'} done"
    if step_in_epoch > 0:
        return f"in epoch {epochs_done + 1}{of}"
    return f"after epoch {epochs_done}{of}" if epochs_done else f"before epoch 1{of}"


def format_duration(seconds: float | None) -> str:
    """`1h30m`, `4m05s`; `?` for an unknown, NaN or negative duration."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
