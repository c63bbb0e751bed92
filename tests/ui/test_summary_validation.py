"""The summary's validation lines: the newest loss, and which LoRA file to use and why."""

from __future__ import annotations

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.ui.summary import summary_markdown, summary_text


def test_the_summary_says_which_file_to_use_and_why():
    result = {"outcome": "completed", "steps_done": 40, "total_steps": 40, "validation": [(20, 0.1301), (40, 0.1402)],
              "best_epoch": {"epoch": 1, "loss": 0.1301, "file": "p-000001.safetensors", "set": "held-out, 6 images"}}
    cfg = TrainingConfig(dataset="d", project_name="p")
    for text in (summary_text(cfg, result), summary_markdown(cfg, result, "/runs")):
        assert "validation loss: 0.1402 at step 40" in text
        assert "use p-000001.safetensors: lowest validation loss 0.1301 at epoch 1 (held-out, 6 images)" in text


def test_no_validation_no_lines():
    text = summary_text(TrainingConfig(dataset="d"), {"outcome": "completed", "steps_done": 1, "total_steps": 1})
    assert "validation" not in text and "use " not in text
