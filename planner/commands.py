"""`anima-lora plan`: print the plan; exit 2 with a one-line error when the run would stop."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from ..config import TrainingConfig
from ..errors import UserInputError
from ..platforms.detect import PlatformInfo, detect_platform
from .plan import make_plan


def run_plan(
    config: TrainingConfig,
    samples_per_bucket: Mapping,
    *,
    gpu: str | None,
    as_json: bool,
    platform: PlatformInfo | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    steps_done: int = 0,
    notes: Sequence[str] = (),
) -> int:
    """Print the plan (table or JSON) from `steps_done` on, with `notes` among its warnings; 0 when it
    fits, resumes or proceeds, 2 when it stops."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        # A named GPU needs no torch query: plan for it from the table.
        platform = platform or detect_platform(gpu=(lambda: None) if gpu else None, session_budget_hours=config.session_budget_hours)
        plan = make_plan(config, samples_per_bucket, platform, gpu=gpu, steps_done=steps_done)
        plan.warnings[:0] = notes
    except UserInputError as exc:
        print(f"error: {exc}", file=err)
        return 2
    print(json.dumps(plan.model_dump(mode="json"), indent=2) if as_json else plan.to_text(), file=out)
    if plan.decision == "stop":
        print(f"error: {plan.reason}", file=err)
        for suggestion in plan.suggestions:
            print(f"  try: {suggestion.text}", file=err)
        return 2
    return 0
