"""Sample grids in the runner: stored like checkpoints, the base row stored once and fetched back, failures reported."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.runner.supervise import Outcome, _apply
from anima_lora_flow.runner.sync import CheckpointSyncer
from anima_lora_flow.runner.train import fetch_base_samples
from anima_lora_flow.storage import RunStore, resolve_location
from anima_lora_flow.trainer.events import Samples
from anima_lora_flow.trainer.sample_plan import BASE_SAMPLES_DIR
from anima_lora_flow.ui.samples import samples_markdown
from anima_lora_flow.ui.summary import summary_markdown, summary_text


def _png(path: Path, color) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def test_grids_and_the_base_row_reach_the_store_and_a_fresh_work_dir_gets_the_base_row_back(tmp_path, memory_fs):
    store = RunStore(resolve_location("memory://runs"), "p")
    syncer = CheckpointSyncer(store, fingerprint="fp", retry_delays=(0.01,))
    work = tmp_path / "work"
    base = [_png(work / BASE_SAMPLES_DIR / f"k1-{i:02d}.png", (i, 0, 0)) for i in range(2)]
    grid = _png(tmp_path / "out" / "samples" / "p-step00000003.png", (9, 9, 9))
    outcome = Outcome()
    _apply(Samples(path=str(grid), step=3, epoch=1, prompts=["a", "b"], base=[str(b) for b in base]), outcome, syncer)
    _apply(Samples(step=6, epoch=2, prompts=["a", "b"], error="OutOfMemoryError: CUDA out of memory"), outcome, syncer)
    assert syncer.close(timeout=10)
    assert store.listdir("samples") == ["base", "p-step00000003.png"]
    assert store.listdir("samples/base") == ["k1-00.png", "k1-01.png"]
    assert outcome.samples == [str(grid)] and outcome.sampling_errors == [(6, "OutOfMemoryError: CUDA out of memory")]

    fresh = tmp_path / "fresh-machine"
    fetched = fetch_base_samples(store, fresh, print)
    assert [p.name for p in fetched] == ["k1-00.png", "k1-01.png"]
    assert all((fresh / BASE_SAMPLES_DIR / b.name).read_bytes() == b.read_bytes() for b in base)
    assert fetch_base_samples(store, fresh, print) == []  # already there: nothing copied again
    assert not list((fresh / BASE_SAMPLES_DIR).glob(".*"))  # no partial file left beside them


def test_a_store_that_cannot_be_read_only_costs_the_base_row(tmp_path):
    class Broken:
        def listdir(self, rel):
            raise OSError("Transport endpoint is not connected")

    said = []
    assert fetch_base_samples(Broken(), tmp_path, said.append) == []
    assert "drawn again" in said[0]


def test_the_artifact_shows_the_image_itself_and_a_failure_says_why(tmp_path):
    grid = _png(tmp_path / "p-step00000003.png", (1, 2, 3))
    text = samples_markdown(Samples(path=str(grid), step=3, epoch=1, prompts=["1girl, solo", ""]), "p")
    assert "](data:image/jpeg;base64," in text and "1. 1girl, solo" in text and "2. (empty prompt)" in text
    failed = samples_markdown(Samples(step=6, epoch=2, error="RuntimeError: boom"), "p")
    assert "failed" in failed and "RuntimeError: boom" in failed and "data:image" not in failed


def test_the_summary_names_the_grids_and_each_failed_sampling_point():
    cfg = TrainingConfig(dataset="d", project_name="p")
    result = {"outcome": "completed", "steps_done": 6, "total_steps": 6, "samples": ["/s/p/samples/p-step00000006.png"],
              "sampling_errors": [[3, "OutOfMemoryError: CUDA out of memory"]]}  # a list once through JSON
    for text in (summary_text(cfg, result), summary_markdown(cfg, result, "/s")):
        assert "sample grids: 1, the newest /s/p/samples/p-step00000006.png" in text
        assert "sampling failed at step 3 (training went on): OutOfMemoryError: CUDA out of memory" in text


def test_the_console_says_where_each_grid_is_and_why_one_failed():
    import io

    from anima_lora_flow.ui.progress import ConsoleProgress

    out = io.StringIO()
    progress = ConsoleProgress(file=out, echo_checkpoints=False, echo_messages=False)
    progress(Samples(path="/o/samples/p-step00000003.png", step=3))
    progress(Samples(step=6, error="OutOfMemoryError: CUDA out of memory"))
    assert out.getvalue().splitlines() == [
        "sample grid at step 3: /o/samples/p-step00000003.png",
        "sampling at step 6 failed, training goes on: OutOfMemoryError: CUDA out of memory",
    ]
