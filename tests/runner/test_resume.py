"""Resume selection: newest verified state, refusal on changed settings, skipping broken uploads."""

from __future__ import annotations

import json

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.runner.resume import ResumeRefusedError, find_resume_point, judge_resume, state_extra
from anima_lora_flow.storage import RunStore, resolve_location


def _publish(store, tmp_path, step, cfg, dataset_fp="d"):
    folder = tmp_path / f"s{step}"
    folder.mkdir()
    (folder / "adapter.safetensors").write_bytes(b"a" * step)
    store.publish_state(
        folder, step, epoch=1, fingerprint=cfg.fingerprint(dataset_fp),
        extra=state_extra(cfg.training_fields(), dataset_fp),
    )


def _find(store, cfg, tmp_path, dataset_fp="d", restart=False):
    return find_resume_point(
        store, fingerprint=cfg.fingerprint(dataset_fp), training_fields=cfg.training_fields(),
        dataset_fingerprint=dataset_fp, download_to=tmp_path / "dl", restart=restart,
    )


@pytest.fixture
def store(tmp_path):
    return RunStore(resolve_location(str(tmp_path / "runs")), "p")


def test_newest_matching_state_is_downloaded(store, tmp_path):
    cfg = TrainingConfig(dataset="x")
    _publish(store, tmp_path, 10, cfg)
    _publish(store, tmp_path, 20, cfg)
    point = _find(store, cfg, tmp_path)
    assert point.step == 20
    assert (point.local_dir / "adapter.safetensors").read_bytes() == b"a" * 20


def test_truncated_upload_is_never_chosen(store, tmp_path):
    cfg = TrainingConfig(dataset="x")
    _publish(store, tmp_path, 10, cfg)
    _publish(store, tmp_path, 20, cfg)
    with store.fs.open(store.path("state/000000020/adapter.safetensors"), "wb") as fh:
        fh.write(b"a" * 5)
    point = _find(store, cfg, tmp_path)
    assert point.step == 10
    assert "step 20" in point.skipped[0]


def test_changed_learning_rate_continues_with_a_warning(store, tmp_path):
    _publish(store, tmp_path, 10, TrainingConfig(dataset="x"))
    point = _find(store, TrainingConfig(dataset="x", learning_rate=3e-4), tmp_path)
    assert point.step == 10
    assert point.changes == ["--learning-rate 0.0001 -> 0.0003: the learning-rate schedule is re-planned from step 10"]
    assert point.describe().splitlines()[1].strip() == point.changes[0]


def test_changed_network_dim_refuses_naming_old_and_new_as_flags(store, tmp_path):
    _publish(store, tmp_path, 10, TrainingConfig(dataset="x"))
    with pytest.raises(ResumeRefusedError, match=r"state at step 10 .*--network-dim 20 -> 8; --seed 42 -> 7\).*--restart"):
        _find(store, TrainingConfig(dataset="x", network_dim=8, seed=7, learning_rate=3e-4), tmp_path)


def test_sd_scripts_cannot_continue_under_a_new_learning_rate(store, tmp_path):
    """Its resume restores the optimizer's and the scheduler's learning rate from the state: a new one would be ignored."""
    _publish(store, tmp_path, 10, TrainingConfig(dataset="x", trainer="sd-scripts"))
    with pytest.raises(ResumeRefusedError, match=r"--learning-rate 0.0001 -> 0.0003"):
        _find(store, TrainingConfig(dataset="x", trainer="sd-scripts", learning_rate=3e-4), tmp_path)
    point = _find(store, TrainingConfig(dataset="x", trainer="sd-scripts", max_train_epochs=12), tmp_path)
    assert point.step == 10 and "--max-train-epochs 10 -> 12" in point.changes[0]


def test_more_epochs_make_a_finished_run_resumable(store, tmp_path):
    cfg = TrainingConfig(dataset="x", max_train_epochs=2)
    folder = tmp_path / "s24"
    folder.mkdir()
    (folder / "progress.json").write_text(json.dumps({"global_step": 24, "epoch": 2, "step_in_epoch": 0, "total_steps": 24,
                                                      "steps_per_epoch": 12}))
    store.publish_state(folder, 24, epoch=2, fingerprint=cfg.fingerprint("d"),
                        extra={**state_extra(cfg.training_fields(), "d"), "step_in_epoch": 0, "total_steps": 24, "epochs": 2})
    assert _find(store, cfg, tmp_path).complete
    more = _find(store, TrainingConfig(dataset="x", max_train_epochs=3), tmp_path)
    assert not more.complete and more.total_steps == 36
    assert more.describe().startswith("resuming from the state saved at step 24 of 36, after epoch 2 of 3")
    assert "--max-train-epochs 2 -> 3: the learning-rate schedule is re-planned from step 24" in more.describe()
    assert more.would() == "would resume from step 24 of 36"


def test_judging_downloads_and_moves_nothing(store, tmp_path):
    cfg = TrainingConfig(dataset="x")
    _publish(store, tmp_path, 10, cfg)
    point = judge_resume(store, cfg, "d")
    assert point.step == 10 and point.local_dir is None and not (tmp_path / "dl").exists()
    assert point.would(100) == "would resume from step 10 of 100"  # the total from the plan: the state does not say
    restart = judge_resume(store, cfg.model_copy(update={"restart": True}), "d")
    assert restart.state is None and [s.step for s in store.list_states()] == [10]
    assert restart.would(100).startswith("would start over at step 0 of 100 (--restart moves the earlier states to")
    with pytest.raises(ResumeRefusedError, match="dataset's images or captions"):
        judge_resume(store, cfg, "other")


def test_every_setting_has_a_resume_rule():
    """A new setting must be sorted into match / continue / free before it ships (README's table too)."""
    from pathlib import Path as P

    from anima_lora_flow.config import RESUME_RULES

    assert set(RESUME_RULES) == set(TrainingConfig.model_fields)
    readme = (P(__file__).parents[2] / "README.md").read_text()
    table = readme[readme.index("<!-- resume-rules -->"):readme.index("<!-- /resume-rules -->")]
    for name, rule in RESUME_RULES.items():
        if rule != "free":
            assert f"--{name.replace('_', '-')}" in table, name


def test_changed_dataset_refuses(store, tmp_path):
    cfg = TrainingConfig(dataset="x")
    _publish(store, tmp_path, 10, cfg, dataset_fp="d1")
    with pytest.raises(ResumeRefusedError, match="dataset's images or captions"):
        _find(store, cfg, tmp_path, dataset_fp="d2")


def test_restart_archives_instead_of_deleting(store, tmp_path):
    cfg = TrainingConfig(dataset="x")
    _publish(store, tmp_path, 10, cfg)
    point = _find(store, TrainingConfig(dataset="x", learning_rate=3e-4), tmp_path, restart=True)
    assert point.state is None and "states moved to" in point.notes[0]
    assert "moved to" in point.describe()
    assert store.list_states() == []
    assert store.listdir("archive")


@pytest.mark.parametrize("where", ["local", "memory"])
def test_restart_moves_the_earlier_loras_aside_too(where, tmp_path, memory_fs):
    store = RunStore(resolve_location(str(tmp_path / "runs") if where == "local" else "memory://runs"), "p")
    cfg = TrainingConfig(dataset="x")
    _publish(store, tmp_path, 10, cfg)
    for name, payload in (("p-000001.safetensors", b"epoch one"), ("p.safetensors", b"final"),
                          ("p.kohya.safetensors", b"kohya")):
        store.write_bytes(f"checkpoints/{name}", payload)

    first = _find(store, cfg, tmp_path, restart=True)
    moved = dict(note.split(" moved to ") for note in first.notes)
    assert set(moved) == {"--restart: the earlier states", "--restart: the earlier checkpoints"}
    kept = moved["--restart: the earlier checkpoints"].removesuffix(" (nothing deleted)")
    assert kept.rsplit("/", 1)[1].startswith("checkpoints-")
    with store.fs.open(f"{kept}/p.safetensors", "rb") as fh:
        assert fh.read() == b"final"
    assert store.list_checkpoints() == [] and store.list_states() == []

    # A second restart within the same second never moves into (or over) the first archive.
    (tmp_path / "again").mkdir()
    _publish(store, tmp_path / "again", 5, cfg)
    store.write_bytes("checkpoints/p.safetensors", b"second final")
    stamp = kept.rsplit("checkpoints-", 1)[1]
    again = store.archive(["state", "checkpoints"], stamp=stamp)
    assert again["checkpoints"] == f"{kept}-2" and again["state"].endswith(f"state-{stamp}-2")
    with store.fs.open(f"{kept}/p.safetensors", "rb") as fh:
        assert fh.read() == b"final"
    with store.fs.open(f"{kept}-2/p.safetensors", "rb") as fh:
        assert fh.read() == b"second final"
    assert sorted(store.listdir("archive")) == sorted(
        [kept.rsplit("/", 1)[1], f"{kept.rsplit('/', 1)[1]}-2", f"state-{stamp}", f"state-{stamp}-2"])


def test_the_resume_line_names_epochs_one_based(store, tmp_path):
    cfg = TrainingConfig(dataset="x", max_train_epochs=10)
    folder = tmp_path / "s39"
    folder.mkdir()
    (folder / "adapter.safetensors").write_bytes(b"w")
    # What the trainer reports for a stop at step 39 with 12 steps per epoch: 3 epochs finished, 3 steps into the 4th.
    store.publish_state(folder, 39, epoch=3, fingerprint=cfg.fingerprint("d"),
                        extra={**state_extra(cfg.training_fields(), "d"), "step_in_epoch": 3, "total_steps": 120})
    point = _find(store, cfg, tmp_path)
    assert point.describe() == "resuming from the state saved at step 39 of 120, in epoch 4 of 10"
    assert not point.complete


def test_a_state_from_before_total_steps_is_judged_by_its_progress_file(store, tmp_path):
    """Manifests written before they held total_steps: the native state's progress.json says it is the last step."""
    cfg = TrainingConfig(dataset="x", max_train_epochs=2)
    folder = tmp_path / "s24"
    folder.mkdir()
    (folder / "progress.json").write_text(json.dumps({"global_step": 24, "epoch": 2, "step_in_epoch": 0, "total_steps": 24}))
    store.publish_state(folder, 24, epoch=2, fingerprint=cfg.fingerprint("d"), extra=state_extra(cfg.training_fields(), "d"))
    point = _find(store, cfg, tmp_path)
    assert point.complete and point.total_steps == 24
    assert point.describe() == "training is already complete: the state saved at step 24 of 24, after epoch 2 of 2 is its last"
