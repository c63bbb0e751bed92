"""The rendered sd-scripts TOML files against the seed notebook's values (seed-behaviour §5), key by key."""

from __future__ import annotations

import tomllib

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.errors import UserInputError
from anima_lora_flow.trainer.sdscripts.render import (
    config_file_names,
    render_dataset_toml,
    render_training_toml,
    to_toml,
    validate_sdscripts_args,
)

DIT = "/content/models/anima/dit/anima-preview.safetensors"
QWEN3 = "/content/models/anima/text_encoder/qwen_3_06b_base.safetensors"
VAE = "/content/models/anima/vae/qwen_image_vae.safetensors"
OUT = "/content/drive/MyDrive/lora_training/output/my_dataset"

# seed-behaviour §5.1, the v4 file with defaults: 39 keys in this order.
SEED_TRAINING = {
    "pretrained_model_name_or_path": DIT,
    "qwen3": QWEN3,
    "vae": VAE,
    "network_module": "networks.lora_anima",
    "network_dim": 20,
    "network_alpha": 20,
    "network_train_unet_only": True,
    "learning_rate": 0.0001,
    "optimizer_type": "AdamW8bit",
    "optimizer_args": ["weight_decay=0.1", "betas=[0.9, 0.99]"],
    "lr_scheduler": "cosine_with_restarts",
    "lr_scheduler_num_cycles": 1,
    "lr_warmup_steps": 100,
    "max_train_epochs": 10,
    "train_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "max_grad_norm": 1.0,
    "seed": 42,
    "timestep_sampling": "sigmoid",
    "discrete_flow_shift": 1.0,
    "qwen3_max_token_length": 512,
    "t5_max_token_length": 512,
    "mixed_precision": "bf16",
    "gradient_checkpointing": True,
    "cache_latents": True,
    "cache_text_encoder_outputs": True,
    "vae_chunk_size": 64,
    "vae_disable_cache": True,
    "output_dir": OUT,
    "output_name": "my_lora",
    "save_model_as": "safetensors",
    "save_precision": "bf16",
    "save_every_n_epochs": 1,
    "save_last_n_epochs": 4,
    "shuffle_caption": False,
    "caption_extension": ".txt",
    "noise_offset": 0.03,
    "multires_noise_discount": 0.3,
    "training_comment": "Anima LoRA - 2026-02-21",
}
# The seed's mistakes we drop (no effect for Anima, seed-behaviour §11.1.10), and what we add.
DROPPED = {"noise_offset", "multires_noise_discount"}
ADDED = {"sigmoid_scale": 1.0, "save_state": True}

# seed-behaviour §5.2 (repeats: the form default 5).
SEED_DATASET = {
    "general": {
        "resolution": 768,
        "enable_bucket": True,
        "bucket_no_upscale": False,
        "bucket_reso_steps": 64,
        "min_bucket_reso": 256,
        "max_bucket_reso": 4096,
    },
    "datasets": [
        {
            "resolution": 768,
            "subsets": [
                {
                    "num_repeats": 5,
                    "image_dir": "/content/my_training_images",
                    "caption_extension": ".txt",
                    "caption_dropout_rate": 0.1,
                }
            ],
        }
    ],
}


def _config(**overrides) -> TrainingConfig:
    return TrainingConfig(dataset="/content/my_training_images", **overrides)


def _training(config: TrainingConfig | None = None, **kwargs) -> dict:
    # 1000 steps: the seed's 100 warm-up steps are a tenth of it, so they stay as the seed wrote them.
    args = dict(dit=DIT, qwen3=QWEN3, vae=VAE, output_dir=OUT, mixed_precision="bf16", run_date="2026-02-21", total_steps=1000)
    return render_training_toml(config or _config(), **{**args, **kwargs})


class TestTrainingToml:
    def test_matches_the_seed_key_by_key(self):
        parsed = tomllib.loads(to_toml(_training()))
        expected = {k: v for k, v in SEED_TRAINING.items() if k not in DROPPED}
        for key, value in expected.items():
            assert parsed[key] == value, key
            assert type(parsed[key]) is type(value), key
        assert set(parsed) - set(expected) == set(ADDED)
        for key, value in ADDED.items():
            assert parsed[key] == value
        assert not DROPPED & set(parsed)

    def test_keeps_the_seed_order(self):
        keys = [k for k in _training() if k in SEED_TRAINING]
        assert keys == [k for k in SEED_TRAINING if k not in DROPPED]

    def test_warmup_is_the_native_trainers(self):
        # effective.warmup_steps: at most a tenth of the run. Before, the TOML kept 100 steps on a run of 500
        # (the native trainer used 50) and on one of 101 steps.
        assert _training(total_steps=80)["lr_warmup_steps"] == 8
        assert _training(total_steps=101)["lr_warmup_steps"] == 10
        assert _training(total_steps=500)["lr_warmup_steps"] == 50
        assert _training(total_steps=5)["lr_warmup_steps"] == 1
        assert _training(_config(lr_scheduler="constant"), total_steps=1000)["lr_warmup_steps"] == 0

    def test_needs_the_step_count(self):
        with pytest.raises(ValueError, match="total steps"):
            _training(total_steps=None)

    def test_auto_optimizer_is_the_seeds_adamw8bit(self):
        assert _config().optimizer == "auto"
        assert _training()["optimizer_type"] == "AdamW8bit"
        assert _training(_config(optimizer="adamw8bit"))["optimizer_type"] == "AdamW8bit"

    def test_optimizer_args_follow_the_optimizer(self):
        adafactor = _training(_config(optimizer="adafactor"))
        assert adafactor["optimizer_type"] == "Adafactor"
        assert not any(a.startswith("betas") for a in adafactor["optimizer_args"])
        assert "relative_step=False" in adafactor["optimizer_args"]
        adamw = _training(_config(optimizer="adamw", betas=(0.9, 0.999), weight_decay=0.01))
        assert adamw["optimizer_type"] == "AdamW"
        assert adamw["optimizer_args"] == ["weight_decay=0.01", "betas=[0.9, 0.999]"]

    def test_values_follow_the_config(self):
        config = _config(
            network_dim=8, network_alpha=4.5, batch_size=2, gradient_accumulation_steps=3, seed=7,
            timestep_sampling="shift", discrete_flow_shift=3.0, gradient_checkpointing=False,
            save_every_n_epochs=0, save_last_n_epochs=0, project_name="cat",
        )  # fmt: skip
        training = _training(config, mixed_precision="fp16")
        assert training["network_alpha"] == 4.5
        assert (training["train_batch_size"], training["gradient_accumulation_steps"]) == (2, 3)
        assert (training["timestep_sampling"], training["discrete_flow_shift"]) == ("shift", 3.0)
        assert training["mixed_precision"] == "fp16" and training["gradient_checkpointing"] is False
        assert training["output_name"] == "cat" and training["seed"] == 7
        # 0 = only the final LoRA / keep all: unset for sd-scripts
        assert "save_every_n_epochs" not in training and "save_last_n_epochs" not in training

    def test_resume_and_state_keys(self):
        fresh = _training(save_state=False)
        assert not {"save_state", "resume", "skip_until_initial_step", "save_every_n_steps"} & set(fresh)
        resumed = _training(resume_dir="/runs/my_lora-step00000500-state", save_every_n_steps=250)
        assert resumed["save_state"] is True and resumed["save_every_n_steps"] == 250
        assert resumed["resume"] == "/runs/my_lora-step00000500-state"
        assert resumed["skip_until_initial_step"] is True
        # sd-scripts #2407: batch skipping is wrong with gradient accumulation
        accumulated = _training(_config(gradient_accumulation_steps=4), resume_dir="/runs/s")
        assert "skip_until_initial_step" not in accumulated and accumulated["resume"] == "/runs/s"
        validate_sdscripts_args(accumulated, render_dataset_toml(_config(), image_dir="/x"))


class TestDatasetToml:
    def test_matches_the_seed(self):
        parsed = tomllib.loads(to_toml(render_dataset_toml(_config(), image_dir="/content/my_training_images")))
        assert parsed == SEED_DATASET

    def test_values_follow_the_config(self):
        config = _config(resolution=512, repeats=3, caption_dropout=0.0, bucket_reso_steps=32, min_bucket_reso=320)
        dataset = render_dataset_toml(config, image_dir="/d")
        assert dataset["general"]["bucket_reso_steps"] == 32 and dataset["general"]["min_bucket_reso"] == 320
        subset = dataset["datasets"][0]["subsets"][0]
        assert subset == {"num_repeats": 3, "image_dir": "/d", "caption_extension": ".txt", "caption_dropout_rate": 0.0}


class TestValidate:
    def _pair(self):
        return _training(), render_dataset_toml(_config(), image_dir="/d")

    def test_rendered_defaults_pass(self):
        validate_sdscripts_args(*self._pair())
        for optimizer in ("adamw", "adafactor"):
            validate_sdscripts_args(_training(_config(optimizer=optimizer)), self._pair()[1])

    @pytest.mark.parametrize(
        ("key", "value", "allowed"),
        [
            ("timestep_sampling", "logit_normal", "flux_shift"),
            ("mixed_precision", "auto", "bf16"),
            ("save_precision", "fp8", "float"),
            ("lr_scheduler", "cosine_annealing", "cosine_with_restarts"),
            ("optimizer_type", "AdamW9bit", "AdamW8bit"),
            ("save_model_as", "diffusers", "safetensors"),
        ],
    )
    def test_bad_choice_names_key_value_and_choices(self, key, value, allowed):
        training, dataset = self._pair()
        training[key] = value
        with pytest.raises(UserInputError) as err:
            validate_sdscripts_args(training, dataset)
        assert key in str(err.value) and repr(value) in str(err.value) and allowed in str(err.value)

    def test_optimizer_name_is_case_insensitive_like_sd_scripts(self):
        training, dataset = self._pair()
        training["optimizer_type"] = "adamw8bit"
        validate_sdscripts_args(training, dataset)

    def test_betas_rejected_for_sgd(self):
        training, dataset = self._pair()
        training["optimizer_type"] = "SGDNesterov"
        with pytest.raises(UserInputError, match="takes no betas"):
            validate_sdscripts_args(training, dataset)

    def test_bucket_steps_must_be_a_multiple_of_16(self):
        training, dataset = self._pair()
        dataset["general"]["bucket_reso_steps"] = 40
        with pytest.raises(UserInputError, match=r"bucket_reso_steps=40 .*multiple of 16"):
            validate_sdscripts_args(training, dataset)

    def test_warmup_with_constant_scheduler(self):
        training, dataset = self._pair()
        training["lr_scheduler"] = "constant"
        with pytest.raises(UserInputError, match="lr_warmup_steps=100 must be 0"):
            validate_sdscripts_args(training, dataset)

    def test_all_errors_reported_together(self):
        training, dataset = self._pair()
        training["timestep_sampling"] = "bogus"
        training["mixed_precision"] = "fp32"
        dataset["datasets"][0]["subsets"][0]["caption_extension"] = ".caption"
        message = str(pytest.raises(UserInputError, validate_sdscripts_args, training, dataset).value)
        assert "timestep_sampling" in message and "mixed_precision" in message and "'.caption'" in message


def test_config_file_names_are_unique_per_run():
    first = config_file_names("my_lora", "2026-02-21_101500")
    second = config_file_names("my_lora", "2026-02-21_120000")
    assert first == ("my_lora_training_config_2026-02-21_101500.toml", "my_lora_dataset_config_2026-02-21_101500.toml")
    assert set(first).isdisjoint(second)
    with pytest.raises(UserInputError):
        config_file_names("my_lora", "../x")


def test_render_configs_writes_valid_named_files(tmp_path):
    from anima_lora_flow.trainer.sdscripts.render import render_configs

    rendered = render_configs(
        _config(), run_id="2026-02-21_101500", image_dir="/d",
        dit=DIT, qwen3=QWEN3, vae=VAE, output_dir=OUT, mixed_precision="bf16", run_date="2026-02-21", total_steps=50,
    )  # fmt: skip
    training_path, dataset_path = rendered.write(tmp_path / "configs")
    assert training_path.name == "my_lora_training_config_2026-02-21_101500.toml"
    assert tomllib.loads(training_path.read_text())["lr_warmup_steps"] == 5
    assert tomllib.loads(dataset_path.read_text()) == rendered.dataset
    with pytest.raises(UserInputError, match="mixed_precision='auto'"):
        render_configs(_config(), run_id="r", image_dir="/d", dit=DIT, qwen3=QWEN3, vae=VAE, output_dir=OUT,
                       mixed_precision="auto", run_date="2026-02-21", total_steps=50)  # fmt: skip


def test_nested_and_kohya_folders_become_one_subset_each(tmp_path):
    from anima_lora_flow.core.train_items import TrainItem
    from anima_lora_flow.trainer.sdscripts.prepare import folder_subsets
    from anima_lora_flow.trainer.sdscripts.render import render_dataset_toml

    items = [
        TrainItem(tmp_path / "a.png", "x", (768, 768), 5),
        TrainItem(tmp_path / "b.png", "x", (768, 768), 5),
        TrainItem(tmp_path / "10_char" / "c.png", "x", (768, 768), 10),
    ]
    subsets = folder_subsets(items)
    assert subsets == [(str(tmp_path), 5), (str(tmp_path / "10_char"), 10)]
    rendered = render_dataset_toml(TrainingConfig(dataset="d"), image_dir=str(tmp_path), subsets=subsets)
    got = [(s["image_dir"], s["num_repeats"]) for s in rendered["datasets"][0]["subsets"]]
    assert got == subsets
