"""`anima-lora status` without a project lists the storage's projects; `status demo` points at the demo's own storage."""

from __future__ import annotations

import json
from pathlib import Path

from anima_lora_flow.cli import main
from anima_lora_flow.errors import EXIT_BAD_INPUT
from anima_lora_flow.storage import RunStore, resolve_location


def _publish(storage: Path, project: str, steps: list[int], total: int, tmp_path: Path) -> None:
    store = RunStore(resolve_location(str(storage)), project)
    for step in steps:
        folder = tmp_path / f"{project}-state-{step}"
        folder.mkdir()
        (folder / "adapter.safetensors").write_bytes(b"w" * step)
        store.publish_state(folder, step, epoch=1, fingerprint="f", extra={"total_steps": total})


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["status", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bare_status_lists_the_projects_with_their_newest_step(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _publish(Path("anima-runs"), "my_lora", [12, 24], 36, tmp_path)
    _publish(Path("anima-runs"), "b_style", [6], 0, tmp_path)
    Path("anima-runs/fresh").mkdir()  # a project whose first run has not saved a state
    code, out, err = _run(capsys)
    assert code == 0, err
    assert out.splitlines() == [
        "projects in ./anima-runs (3):",
        "  b_style  newest state: step 6",
        "  fresh    no state saved yet",
        "  my_lora  newest state: step 24 of 36",
        "details: anima-lora status PROJECT --storage ./anima-runs",
    ]
    code, out, _ = _run(capsys, "--json")
    assert code == 0 and [(p["project"], p["newest_step"]) for p in json.loads(out)["projects"]] == [
        ("b_style", 6), ("fresh", None), ("my_lora", 24)]


def test_bare_status_without_projects_says_where_it_looked(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, _ = _run(capsys)
    assert code == 0 and out == "no projects in ./anima-runs: nothing has trained with this --storage yet\n"
    code, out, _ = _run(capsys, "--storage", str(tmp_path / "elsewhere"))
    assert code == 0 and out.startswith(f"no projects in {tmp_path / 'elsewhere'}:")
    assert not (tmp_path / "anima-runs").exists() and not (tmp_path / "elsewhere").exists()  # status creates nothing


def test_status_demo_points_at_the_demo_storage(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _publish(Path("anima-demo/runs"), "demo", [24], 24, tmp_path)
    code, _, err = _run(capsys, "demo")
    assert code == EXIT_BAD_INPUT
    assert err.strip() == ("error: no project 'demo' in ./anima-runs; the demo keeps its runs in ./anima-demo/runs: "
                           "anima-lora status demo --storage ./anima-demo/runs")
    code, out, _ = _run(capsys)
    assert code == 0 and out.splitlines()[-1] == "the demo keeps its runs in ./anima-demo/runs: anima-lora status --storage ./anima-demo/runs"
    code, out, err = _run(capsys, "demo", "--storage", "./anima-demo/runs")
    assert code == 0 and "step      24 of 24" in out, err


def test_an_unknown_project_names_the_listing_command(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, "nope")
    assert code == EXIT_BAD_INPUT
    assert "run `anima-lora status --storage ./anima-runs` to list its projects" in err
