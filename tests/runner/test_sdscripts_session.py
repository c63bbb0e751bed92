"""The sd-scripts backend through the same session as the native one, with a stand-in sd-scripts.

The stand-in replays the console of a real sd-scripts run (fixtures/fresh_run.log, written from
sd-scripts' own strings) and creates the files it announces, so the events, the checkpoint sync and
the final publish are exercised without a GPU or a clone of sd-scripts.
"""

from __future__ import annotations

import os
import stat
import sys
import textwrap
from pathlib import Path

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.runner.train import run_training_session
from anima_lora_flow.storage import RunStore, resolve_location

FIXTURE = Path(__file__).parents[1] / "trainer" / "sdscripts" / "fixtures" / "fresh_run.log"

STAND_IN = textwrap.dedent(
    """
    import re, sys, time, tomllib
    from pathlib import Path
    args = sys.argv[1:]
    cfg = tomllib.loads(Path(args[args.index("--config_file") + 1]).read_text())
    out = cfg["output_dir"].rstrip("/")
    text = Path(sys.argv[0]).with_name("replay.log").read_text().replace("/out/", out + "/")
    for piece in re.split(r"(\\r|\\n)", text):
        for path in re.findall(re.escape(out) + r"/[^\\s,']+", piece):
            target = Path(path)
            if target.suffix:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b"x" * 64)
        sys.stdout.write(piece)
        sys.stdout.flush()
        time.sleep(0.001)
    """
)


def _fake_checkout(root: Path) -> Path:
    sd = root / "sd-scripts"
    sd.mkdir(parents=True)
    (sd / "anima_train_network.py").write_text(STAND_IN)
    (sd / "replay.log").write_text(FIXTURE.read_text(encoding="utf-8"), encoding="utf-8")
    accelerate = root / "venv" / "bin" / "accelerate"
    accelerate.parent.mkdir(parents=True)
    # `accelerate launch --num_cpu_threads_per_process 1 SCRIPT ARGS...` -> python SCRIPT ARGS...
    accelerate.write_text(f"#!{sys.executable}\nimport os, sys\nos.execv(sys.executable, [sys.executable, *sys.argv[4:]])\n")
    accelerate.chmod(accelerate.stat().st_mode | stat.S_IEXEC)
    return sd


def test_sd_scripts_session_syncs_and_publishes(tmp_path):
    sd_dir = _fake_checkout(tmp_path / "cache")
    images = tmp_path / "images"
    images.mkdir()
    cfg = TrainingConfig(project_name="my_lora", dataset=str(images), storage=str(tmp_path / "runs"),
                         trainer="sd-scripts", max_train_epochs=2, work_dir=str(tmp_path / "work"))
    store = RunStore(resolve_location(cfg.storage), cfg.project_name)
    fields = {"dataset_dir": str(images), "dit": "/m/dit.safetensors", "text_encoder": "/m/te.safetensors",
              "vae": "/m/vae.safetensors", "precision": "bf16", "total_steps": 8, "tool_dir": str(sd_dir)}
    result = run_training_session(
        cfg, items=[], dataset_fingerprint="d", models_dir=None, store=store, work_dir=Path(cfg.work_dir),
        run_id="r1", log=lambda m: None, job_fields=fields,
    )
    assert result.outcome == "completed" and result.steps_done == 8
    assert store.list_checkpoints() == ["my_lora-000001.safetensors", "my_lora.safetensors"]
    # The step-4 state may be skipped as obsolete when the step-8 one is already queued.
    assert store.list_states()[-1].step == 8
    configs = list((Path(cfg.work_dir) / "runs" / "r1" / "configs").glob("*.toml"))
    assert len(configs) == 2
    assert os.path.exists(store.path("logs", "r1.log"))
