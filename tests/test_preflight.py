"""Settings this version does not build are refused up front, naming the flag to change."""

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.errors import NotBuiltError
from anima_lora_flow.planner.preflight import check_supported


def test_defaults_are_supported():
    check_supported(TrainingConfig(dataset="d"))


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"timestep_sampling": "flux_shift"}, "--trainer sd-scripts"),
        ({"trainer": "sd-scripts", "num_gpus": 2}, "--trainer native or --num-gpus 1"),
    ],
)
def test_unbuilt_settings_are_named(changes, flag):
    with pytest.raises(NotBuiltError, match=flag):
        check_supported(TrainingConfig(dataset="d", **changes))
    check_supported(TrainingConfig(dataset="d", trainer="sd-scripts", timestep_sampling="flux_shift"))
    check_supported(TrainingConfig(dataset="d", num_gpus=2))


# --- optional packages, checked before any download (issue 17 item 7, issue 16 item 4) ------------------
from anima_lora_flow.errors import UserInputError  # noqa: E402
from anima_lora_flow.planner.preflight import missing_packages  # noqa: E402


def _absent(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


@pytest.mark.parametrize(
    ("backend", "module", "install"),
    [("flash", "flash_attn", "pip install flash-attn"), ("flash_varlen", "flash_attn", "pip install flash-attn"),
     ("sage", "sageattention", "pip install sageattention"), ("xformers", "xformers", "pip install xformers"),
     ("flash_hub", "kernels", "pip install kernels"), ("sage_hub", "kernels", "pip install kernels")],
)
def test_an_attention_backend_without_its_package_is_refused_with_the_install_line(backend, module, install):
    if not _absent(module):
        pytest.skip(f"{module} is installed here")
    with pytest.raises(UserInputError, match=f"--attention-backend {backend} needs the {module} package: {install}, "
                                             "or use --attention-backend native"):
        check_supported(TrainingConfig(dataset="d", attention_backend=backend, optimizer="adamw"))


def test_an_installed_attention_package_is_found_without_importing_it(tmp_path, monkeypatch):
    import sys

    package = tmp_path / "flash_attn"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('imported: find_spec must not run this')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    check_supported(TrainingConfig(dataset="d", attention_backend="flash", optimizer="adamw"))
    assert "flash_attn" not in sys.modules


def test_native_and_builtin_backends_need_nothing():
    for backend in ("native", "_native_cudnn", "_native_flash", "flex"):
        assert missing_packages(TrainingConfig(dataset="d", attention_backend=backend, optimizer="adamw")) == []


def test_adamw8bit_on_the_native_trainer_needs_bitsandbytes():
    if not _absent("bitsandbytes"):
        pytest.skip("bitsandbytes is installed here")
    with pytest.raises(UserInputError, match=r'--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes'):
        check_supported(TrainingConfig(dataset="d", optimizer="adamw8bit"))
    # sd-scripts runs in its own environment with its own requirements
    assert missing_packages(TrainingConfig(dataset="d", optimizer="adamw8bit", trainer="sd-scripts")) == []


def test_every_missing_package_is_named_at_once():
    if not (_absent("bitsandbytes") and _absent("xformers")):
        pytest.skip("bitsandbytes or xformers is installed here")
    problems = missing_packages(TrainingConfig(dataset="d", optimizer="adamw8bit", attention_backend="xformers"))
    assert len(problems) == 2
