"""The config model: the seed's defaults, loud errors, and a fingerprint that tracks training settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from anima_lora_flow.config import TrainingConfig, diff_training_fields, load_config_file

# seed-behaviour.md §1 (form fields) and §5.1 (the training TOML the notebook writes).
SEED_DEFAULTS = {
    "project_name": "my_lora",
    "network_dim": 20,
    "network_alpha": 20,
    "learning_rate": 1e-4,
    "max_train_epochs": 10,
    "resolution": 768,
    "repeats": 5,
    "caption_dropout": 0.1,
    "batch_size": 1,
    "gradient_accumulation_steps": 1,
    "optimizer": "auto",  # the seed's AdamW8bit on sd-scripts, fused AdamW natively (tests/test_effective.py)
    "weight_decay": 0.1,
    "betas": (0.9, 0.99),
    "lr_scheduler": "cosine_with_restarts",
    "lr_scheduler_num_cycles": 1,
    "lr_warmup_steps": 100,
    "max_grad_norm": 1.0,
    "seed": 42,
    "timestep_sampling": "sigmoid",
    "discrete_flow_shift": 1.0,
    "gradient_checkpointing": None,  # the planner's choice (effective.py): the seed's on for sd-scripts, off where memory allows natively
    "save_every_n_epochs": 1,
    "save_last_n_epochs": 4,
    "min_bucket_reso": 256,
    "max_bucket_reso": 4096,
    "bucket_reso_steps": 64,
    "base_model": "anima-base-v1.0",
}


def test_defaults_equal_the_seed():
    cfg = TrainingConfig(dataset="/data")
    assert {k: getattr(cfg, k) for k in SEED_DEFAULTS} == SEED_DEFAULTS


def test_every_field_has_a_description():
    missing = [name for name, field in TrainingConfig.model_fields.items() if not field.description]
    assert missing == []


@pytest.mark.parametrize(
    "bad",
    [
        {"project_name": "../escape"},
        {"network_dim": 0},
        {"caption_dropout": 1.5},
        {"bucket_reso_steps": 40},
        {"base_model": "sdxl"},
        {"unknown_key": 1},
        {"dataset": "   "},
    ],
)
def test_bad_values_are_refused(bad):
    with pytest.raises(ValidationError):
        TrainingConfig(**{"dataset": "/data", **bad})


def test_fingerprint_tracks_training_settings_only():
    base = TrainingConfig(dataset="/data")
    assert base.fingerprint("d1") == TrainingConfig(dataset="/elsewhere", storage="gs://b/r").fingerprint("d1")
    assert base.fingerprint("d1") != base.fingerprint("d2")
    # Only what a resume must keep changes it; a new learning rate or epoch count continues the same run.
    assert base.fingerprint("d1") != TrainingConfig(dataset="/data", network_dim=8).fingerprint("d1")
    changed = TrainingConfig(dataset="/data", learning_rate=2e-4, max_train_epochs=12)
    assert base.fingerprint("d1") == changed.fingerprint("d1")
    assert diff_training_fields(base.training_fields(), changed.training_fields()) == [
        "learning_rate: 0.0001 -> 0.0002", "max_train_epochs: 10 -> 12"
    ]


def test_config_files(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('dataset = "/d"\nnetwork_dim = 8\n')
    assert TrainingConfig(**load_config_file(toml)).network_dim == 8
    js = tmp_path / "c.json"
    js.write_text('{"dataset": "/d", "repeats": 2}')
    assert TrainingConfig(**load_config_file(js)).repeats == 2
    with pytest.raises(ValueError, match=".toml or .json"):
        load_config_file(tmp_path / "c.yaml") if (tmp_path / "c.yaml").write_text("x") else None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('dataset = "/d"\nnetwrk_dim = 8\n', "c.toml: unknown setting 'netwrk_dim' (did you mean 'network_dim'?)"),
        ("network-dim = 8\n", "c.toml: unknown setting 'network-dim'; keys use underscores: network_dim"),
        ("foo_bar = 3\n", "c.toml: unknown setting 'foo_bar'; the keys are the flags of `anima-lora train --help`"),
        ("[training]\nnetwork_dim = 8\n", "c.toml: [training] is a table; the file must hold settings at the top level"),
        ('dataset = "/d"\n[x\n', "c.toml: not valid TOML: Expected ']'"),
    ],
)
def test_config_file_errors_name_the_file(tmp_path, monkeypatch, text, says):
    from anima_lora_flow.errors import UserInputError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(UserInputError) as info:
        load_config_file("c.toml")
    assert str(info.value).startswith(says)


def test_json_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text('{"training": {"network_dim": 8}}')
    with pytest.raises(ValueError, match=r"c.json: 'training' is a table"):
        load_config_file(bad)
    bad.write_text('{"a": ')
    with pytest.raises(ValueError, match=r"c.json: not valid JSON"):
        load_config_file(bad)
    bad.write_text("[1]")
    with pytest.raises(ValueError, match=r"c.json: the file must hold settings as keys at the top level"):
        load_config_file(bad)


def test_bucket_errors_point_at_the_setting():
    with pytest.raises(ValidationError) as info:
        TrainingConfig(dataset="d", bucket_reso_steps=40)
    assert info.value.errors()[0]["loc"] == ("bucket_reso_steps",)
    with pytest.raises(ValidationError, match="--resolution 512 must lie between --min-bucket-reso 1024 and --max-bucket-reso"):
        TrainingConfig(dataset="d", resolution=512, min_bucket_reso=1024)


# --- every float finite (issue 17 item 9) ---------------------------------------------------------
@pytest.mark.parametrize("field", ["network_alpha", "sigmoid_scale", "discrete_flow_shift", "learning_rate",
                                   "weight_decay", "max_grad_norm", "session_budget_hours"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_every_float_must_be_finite(field, value):
    with pytest.raises(ValidationError, match="must be a finite number"):
        TrainingConfig(dataset="d", **{field: value})


def test_betas_must_be_finite():
    with pytest.raises(ValidationError, match="finite"):
        TrainingConfig(dataset="d", betas=(0.9, float("nan")))


# --- no coercion between booleans, numbers and strings (issue 17 item 10) -----------------------------
@pytest.mark.parametrize(
    "bad",
    [{"network_dim": True}, {"network_dim": 8.0}, {"network_dim": "8"}, {"learning_rate": "1e-4"},
     {"learning_rate": True}, {"restart": "yes"}, {"restart": 1}, {"gradient_checkpointing": "false"},
     {"project_name": 5}, {"sample_prompts": ["a cat"]}],
)
def test_values_keep_their_type(bad):
    with pytest.raises(ValidationError):
        TrainingConfig(dataset="d", **bad)
    with pytest.raises(ValidationError):  # the flow's parameters arrive as a JSON dict
        TrainingConfig.model_validate({"dataset": "d", **bad})


def test_an_int_fits_a_float_field_and_a_list_fits_betas():
    cfg = TrainingConfig.model_validate({"dataset": "d", "network_alpha": 16, "learning_rate": 1, "betas": [0.9, 0.999]})
    assert cfg.network_alpha == 16.0 and cfg.learning_rate == 1.0 and cfg.betas == (0.9, 0.999)


@pytest.mark.parametrize("betas", [[0.9], [0.9, 0.99, 0.999], 0.9])
def test_betas_need_two_numbers(betas):
    with pytest.raises(ValidationError, match=r"needs two numbers, such as \[0.9, 0.99\]"):
        TrainingConfig(dataset="d", betas=betas)


@pytest.mark.parametrize(
    ("field", "typed", "canonical"),
    [("optimizer", "AdamW8bit", "adamw8bit"), ("optimizer", "AdamW", "adamw"), ("lr_scheduler", "Cosine", "cosine"),
     ("mixed_precision", "BF16", "bf16"), ("timestep_sampling", "Sigmoid", "sigmoid"),
     ("trainer", "SD-Scripts", "sd-scripts"), ("on_overrun", " Resume ", "resume"), ("attention_backend", "Native", "native")],
)
def test_choices_ignore_case_and_keep_the_canonical_spelling(field, typed, canonical):
    assert getattr(TrainingConfig(dataset="d", **{field: typed}), field) == canonical


def test_unknown_choice_is_still_refused():
    with pytest.raises(ValidationError, match="Input should be"):
        TrainingConfig(dataset="d", optimizer="lion")


def test_a_utf8_bom_is_accepted(tmp_path):
    for name, text in (("c.toml", "network_dim = 8\n"), ("c.json", '{"network_dim": 8}')):
        (tmp_path / name).write_text("\ufeff" + text, encoding="utf-8")
        assert load_config_file(tmp_path / name) == {"network_dim": 8}


@pytest.mark.parametrize(("name", "text"), [("c.json", '{"network_dim": 8, "network_dim": 16}'),
                                            ("c.toml", "network_dim = 8\nnetwork_dim = 16\n")])
def test_duplicate_keys_are_refused_by_name(tmp_path, name, text):
    from anima_lora_flow.errors import UserInputError

    (tmp_path / name).write_text(text)
    with pytest.raises(UserInputError, match=f"{name}: network_dim is set twice; keep one of them"):
        load_config_file(tmp_path / name)


# --- project names valid as file names everywhere (issue 17 item 11) --------------------------------
@pytest.mark.parametrize(
    ("name", "problem"),
    [("trailing.", "ends in '.'"), ("name.safetensors", "ends in .safetensors"), ("NAME.SafeTensors", "ends in .safetensors"),
     ("a..b", "contains '..'"), ("a..", "contains '..'"), ("CON", "reserved file name on Windows"),
     ("con", "reserved file name on Windows"), ("Com1", "reserved file name on Windows"),
     ("lpt9.v2", "reserved file name on Windows"), ("COM0", "reserved file name on Windows"), ("nul", "reserved file name on Windows"),
     ("a" * 300, "is 300 characters long, over the limit of 100"), ("my lora", "contains ' '"),
     ("-x", "does not start with a letter or digit"), ("", "does not start with a letter or digit")],
)
def test_project_names_must_work_as_file_names_everywhere(name, problem):
    with pytest.raises(ValidationError) as info:
        TrainingConfig(dataset="d", project_name=name)
    message = str(info.value)
    assert problem in message and "a project name is 1 to 100 letters, digits" in message


@pytest.mark.parametrize("name", ["my_lora", "v1.2-final", "a" * 100, "console", "COM10", "lpt", "auxiliary.v1"])
def test_ordinary_project_names_pass(name):
    assert TrainingConfig(dataset="d", project_name=name).project_name == name
