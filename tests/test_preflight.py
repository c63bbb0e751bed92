"""Settings this version does not build are refused up front, naming the flag to change."""

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.errors import NotBuiltError
from anima_lora_flow.tasks.preflight import check_supported


def test_defaults_are_supported():
    check_supported(TrainingConfig(dataset="d"))


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"sample_every_n_epochs": 2}, "--sample-every-n-epochs 0"),
        ({"timestep_sampling": "flux_shift"}, "--trainer sd-scripts"),
        ({"trainer": "sd-scripts", "num_gpus": 2}, "--trainer native or --num-gpus 1"),
    ],
)
def test_unbuilt_settings_are_named(changes, flag):
    with pytest.raises(NotBuiltError, match=flag):
        check_supported(TrainingConfig(dataset="d", **changes))
    check_supported(TrainingConfig(dataset="d", trainer="sd-scripts", timestep_sampling="flux_shift"))
    check_supported(TrainingConfig(dataset="d", num_gpus=2))
