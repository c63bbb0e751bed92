"""Durable storage: what survives a Colab/Kaggle session."""

import pytest

from anima_lora_flow.platforms.detect import detect_platform
from anima_lora_flow.platforms.durable import is_durable_storage

COLAB = detect_platform({"COLAB_GPU": "1"}, uptime_s=0, gpu=lambda: None)
KAGGLE = detect_platform({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, uptime_s=0, gpu=lambda: None)
LOCAL = detect_platform({}, gpu=lambda: None, has_module=lambda _n: False)


@pytest.mark.parametrize(
    ("storage", "platform", "cwd", "durable"),
    [
        ("/content/drive/MyDrive/runs", COLAB, "/content", True),
        ("drive/MyDrive/runs", COLAB, "/content", True),
        ("/content/runs", COLAB, "/content", False),
        ("./anima-runs", COLAB, "/content", False),
        ("/content/drive-backup", COLAB, "/content", False),
        ("/kaggle/working/runs", KAGGLE, "/kaggle/working", True),
        ("./anima-runs", KAGGLE, "/kaggle/working", True),
        ("/kaggle/temp/runs", KAGGLE, "/kaggle/working", False),
        ("gs://bucket/runs", COLAB, "/content", True),
        ("s3://bucket/runs", KAGGLE, "/", True),
        ("hf://datasets/me/runs", COLAB, "/", True),
        ("memory://runs", LOCAL, "/", False),
        ("file:///content/runs", COLAB, "/", False),
        ("./anima-runs", LOCAL, "/home/me", True),
        ("/tmp/runs", LOCAL, "/", True),
    ],
)
def test_durability(storage, platform, cwd, durable):
    assert is_durable_storage(storage, platform, cwd) is durable
