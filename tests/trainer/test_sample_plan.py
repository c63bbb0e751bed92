"""Sample prompts: resolved sizes and defaults, the dataset-caption default, and bad prompt files refused up front."""

from __future__ import annotations

import pytest

from anima_lora_flow.cli import main
from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.core.sample_prompts import SamplePrompt
from anima_lora_flow.core.train_items import TrainItem
from anima_lora_flow.errors import UserInputError
from anima_lora_flow.planner.preflight import check_supported
from anima_lora_flow.trainer.sample_plan import DEFAULT_GUIDANCE, DEFAULT_STEPS, dataset_prompts, sample_prompts_for


def _cfg(tmp_path, text: str | None, **fields) -> TrainingConfig:
    path = ""
    if text is not None:
        path = str(tmp_path / "prompts.txt")
        (tmp_path / "prompts.txt").write_text(text, encoding="utf-8")
    return TrainingConfig(dataset="d", resolution=1024, sample_every_n_epochs=1, sample_prompts=path, **fields)


def test_prompt_file_sizes_and_defaults_are_resolved(tmp_path):
    cfg = _cfg(tmp_path, "# comment\n1girl, solo --w 832 --h 1216 --s 12 --d 7 --l 5.5 --n lowres\n\ncat --w 832\nsky\n", seed=40)
    first, second, third = sample_prompts_for(cfg, [])
    assert (first.width, first.height, first.steps, first.seed, first.guidance, first.negative_prompt) == (
        832, 1216, 12, 7, 5.5, "lowres")
    assert (second.width, second.height) == (832, 1216)  # the missing side from the bucket of the given one
    assert (third.width, third.height, third.steps, third.guidance) == (1024, 1024, DEFAULT_STEPS, DEFAULT_GUIDANCE)
    assert (second.seed, third.seed) == (41, 42)  # the run's seed plus the prompt's place: fixed on every resume


def test_without_a_file_a_few_captions_are_chosen_by_the_seed(tmp_path):
    items = [TrainItem(tmp_path / f"{i}.png", f"caption {i % 6}", (512, 768) if i % 2 else (640, 640), 1)
             for i in range(12)]  # fmt: skip
    chosen = dataset_prompts(items, seed=3)
    assert len(chosen) == 4 and len({p.prompt for p in chosen}) == 4
    assert dataset_prompts(list(reversed(items)), seed=3) == chosen  # by the seed, not by the files' order
    assert dataset_prompts([items[1]], seed=3) == [SamplePrompt("caption 1", width=512, height=768)]
    bucket = {f"caption {i % 6}": ((512, 768) if i % 2 else (640, 640)) for i in range(12)}
    assert all((p.width, p.height) == bucket[p.prompt] for p in chosen)  # each at its own image's bucket
    cfg = TrainingConfig(dataset="d", sample_every_n_epochs=1, seed=9)
    resolved = sample_prompts_for(cfg, items)
    assert [p.seed for p in resolved] == [9, 10, 11, 12] and all(p.steps == DEFAULT_STEPS for p in resolved)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "cannot read it"),
        ("\n# only a comment\n", "has no prompt"),
        ("a cat --x 3\n", "line 1: unknown option --x"),
        ("ok\n\na cat --w 1024 --h 1088\n", "line 3: --w 1024 --h 1088 is not a size this run trains at"),
        ("a cat --w 128 --h 128\n", "line 1: --w 128 --h 128 is not a size this run trains at"),
        ("a cat --w 1000\n", "line 1: --w 1000 is not a size this run trains at"),
    ],
)
def test_bad_prompt_files_are_refused_before_anything_runs(tmp_path, text, says):
    cfg = _cfg(tmp_path, text) if text is not None else TrainingConfig(
        dataset="d", sample_every_n_epochs=1, sample_prompts=str(tmp_path / "missing.txt"))
    with pytest.raises(UserInputError, match=says):
        check_supported(cfg)


def test_the_nearest_bucket_is_suggested(tmp_path):
    with pytest.raises(UserInputError, match="nearest bucket of that shape is --w 1024 --h 1024"):
        check_supported(_cfg(tmp_path, "a cat --w 2048 --h 2048\n"))
    check_supported(_cfg(tmp_path, "a smaller preview, faster --w 512 --h 512\n"))


def test_cli_refuses_a_bad_prompt_file_with_exit_2_before_any_download(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds").mkdir()
    (tmp_path / "prompts.txt").write_text("1girl --w 4000\n", encoding="utf-8")
    code = main(["train", "--dataset", "ds", "--sample-every-n-epochs", "1", "--sample-prompts", "prompts.txt"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --sample-prompts: prompts.txt line 1: --w 4000 is not a size")
    assert err.count("\n") == 1
    assert not (tmp_path / "anima-runs").exists()  # refused before storage, the dataset and the download
    code = main(["train", "--dataset", "ds", "--sample-every-n-epochs", "1", "--sample-prompts", "nope.txt"])
    assert code == 2 and "error: --sample-prompts nope.txt: cannot read it" in capsys.readouterr().err


def test_the_flag_says_it_takes_a_file(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--sample-prompts FILE" in text and "[default: ]" not in text
