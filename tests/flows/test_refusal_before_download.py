"""Under a real Prefect server: a state that cannot be continued is refused before the models stage.

--models-dir names a folder that does not exist, so a run reaching the models stage would fail there
with a models error; the refusal must come first, and no models task may have run.
"""

from __future__ import annotations

import pytest

from anima_lora_flow.cli import build_parser, config_from_args
from anima_lora_flow.runner.resume import ResumeRefusedError

from test_cli_resume import base_args, make_dataset, publish_state  # tests/ is on the path (its conftest)


def _task_names() -> list[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [run.name for run in client.read_task_runs()]


@pytest.mark.parametrize("change", ["network_dim", "dataset"])
def test_a_changed_setting_or_dataset_is_refused_before_the_models_stage(prefect_harness, tmp_path, change):
    from anima_lora_flow.flows.train_lora import train_lora

    make_dataset(tmp_path / "ds")
    publish_state(tmp_path)
    args = base_args(tmp_path)
    if change == "network_dim":
        args += ["--network-dim", "8"]
        expected = r"state at step 12 .*\(config\.network_dim 20 -> 8\)"  # the flow names its parameter, not a flag
    else:
        (tmp_path / "ds" / "3.txt").write_text("1boy, a caption edited since")
        expected = r"state at step 12 .*\(the dataset's images or captions\)"
    config = config_from_args(build_parser().parse_args(["train", *args]))
    before = set(_task_names())
    with pytest.raises(ResumeRefusedError, match=expected):
        train_lora(config=config)
    ran = set(_task_names()) - before
    assert any(name.startswith("check-resume") for name in ran), ran
    assert not any("models" in name for name in ran), ran
