"""The queue file: projects, grids, defaults; every entry validated before anything is submitted.
And `serve` / `queue` without a lasting Prefect server: one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from anima_lora_flow.errors import UserInputError
from anima_lora_flow.flows.queue import read_queue_file
from anima_lora_flow.flows.serve import gpu_slots, per_gpu_environments


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "queue.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_list_of_projects_with_defaults_and_paths_relative_to_the_file(tmp_path):
    path = write(tmp_path, """
[defaults]
dataset = "./data/chars"
storage = "/srv/anima-runs"
network_dim = 8

[[project]]
project_name = "alice"

[[project]]
project_name = "bob"
network_dim = 16
dataset = "gs://bucket/bob"
""")
    entries = read_queue_file(path)
    assert [(e.number, e.project, e.config.network_dim) for e in entries] == [(1, "alice", 8), (2, "bob", 16)]
    # The worker's working directory means nothing to the user: ./ is the queue file's folder.
    assert entries[0].config.dataset == str((tmp_path / "data" / "chars").resolve())
    assert entries[1].config.dataset == "gs://bucket/bob"
    assert entries[0].config.storage == "/srv/anima-runs"


def test_a_grid_gives_one_entry_per_combination_with_deterministic_names(tmp_path):
    path = write(tmp_path, """
[project]
project_name = "style"
dataset = "/data/style"
storage = "/srv/runs"

[grid]
network_dim = [8, 16]
learning_rate = [1e-4, 5e-5]
""")
    entries = read_queue_file(path)
    assert [e.project for e in entries] == [
        "style-network_dim8-learning_rate0.0001", "style-network_dim8-learning_rate5e-05",
        "style-network_dim16-learning_rate0.0001", "style-network_dim16-learning_rate5e-05",
    ]
    assert [(e.config.network_dim, e.config.learning_rate) for e in entries] == [
        (8, 1e-4), (8, 5e-5), (16, 1e-4), (16, 5e-5)]
    assert read_queue_file(path) == entries  # the same names on every run: a restarted queue finds its entries


@pytest.mark.parametrize(("text", "expected"), [
    ('[[project]]\nproject_name = "a"\ndataset = "/d"\n[[project]]\nproject_name = "b"\ndataset = "/d"\nnetwork_dim = 0\n',
     "entry 2 (b): network_dim: Input should be greater than or equal to 1"),
    ('[[project]]\nproject_name = "a"\ndataset = "/d"\nnetwork_dim = "8"\n',
     'entry 1 (a): network_dim: Input should be a valid integer, got "8"'),
    ('[[project]]\nproject_name = "a"\ndataset = "/d"\nnetwork_rank = 8\n', "entry 1 (a): unknown setting 'network_rank'"),
    ('[[project]]\nproject_name = "a"\n', "entry 1 (a): no dataset"),
    ('[[project]]\nproject_name = "a b"\ndataset = "/d"\n', "entry 1 (a b): project_name contains ' '"),
    ('[[project]]\nproject_name = "a"\ndataset = "/d"\n[[project]]\nproject_name = "a"\ndataset = "/e"\n',
     "entries 1 and 2 both have project_name 'a'"),
    ('[project]\ndataset = "/d"\n[grid]\nnetwork_dim = 8\n', "[grid] network_dim must be a list of values"),
    ('[project]\ndataset = "/d"\n[grid]\nproject_name = ["a", "b"]\n', "[grid] project_name: the grid names its entries"),
    ('[project]\ndataset = "/d"\n[grid]\nrank = [1, 2]\n', "[grid] rank: unknown setting"),
    ('[project]\ndataset = "/d"\n[grid]\nnetwork_dim = [8, 8]\n', "[grid] network_dim lists a value twice"),
    ('[[project]]\ndataset = "/d"\n[grid]\nnetwork_dim = [8]\n', "a [grid] goes with one [project] table"),
    ('dataset = "/d"\n', "unknown top-level key 'dataset'"),
    ('[defaults]\ndataset = "/d"\n', "no projects"),
    ('[[project]\n', "not valid TOML"),
])
def test_a_bad_file_is_refused_naming_the_entry_and_the_setting(tmp_path, text, expected):
    with pytest.raises(UserInputError) as caught:
        read_queue_file(write(tmp_path, text))
    assert expected in str(caught.value)


def test_one_runner_per_gpu_each_seeing_its_own_device():
    class Gpu:
        def __init__(self, count, usable=True):
            self.count, self.usable = count, usable

    assert gpu_slots(None) == 1  # no GPU: one CPU run at a time
    assert gpu_slots(Gpu(4)) == 4
    assert gpu_slots(Gpu(2, usable=False)) == 1
    assert [e["CUDA_VISIBLE_DEVICES"] for e in per_gpu_environments(2, {"PATH": "/bin"})] == ["0", "1"]
    # The user's own selection is kept: the runners split the devices it names.
    assert [e["CUDA_VISIBLE_DEVICES"] for e in per_gpu_environments(2, {"CUDA_VISIBLE_DEVICES": "3, 5"})] == ["3", "5"]


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no `anima-lora ui` server recorded there
    return subprocess.run([sys.executable, "-m", "anima_lora_flow.cli", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_serve_and_queue_without_a_lasting_prefect_server_say_what_to_start(tmp_path):
    good = write(tmp_path, '[[project]]\nproject_name = "a"\ndataset = "/d"\n')
    for args in (["serve"], ["queue", str(good)]):
        done = _cli(args, tmp_path)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "anima-lora ui" in lines[0] and "PREFECT_API_URL" in lines[0], done.stderr
    assert not (tmp_path / "anima-runs").exists()


def test_a_bad_entry_submits_nothing_and_exits_2_before_any_server_is_asked(tmp_path):
    bad = write(tmp_path, '[[project]]\nproject_name = "a"\ndataset = "/d"\n[[project]]\nproject_name = "b"\n'
                          'dataset = "/d"\nlearning_rate = 2.0\n')
    done = _cli(["queue", str(bad)], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {bad}: entry 2 (b): learning_rate: Input should be less than or equal to 1"
