"""Google Drive copies are reused by id, and every reuse says which copy, from when, and how to refresh it.

Drive cannot be reached from the tests, so the cache folder is seeded as an earlier run leaves it; where
a Drive answer is needed, gdown is replaced by a function that does what gdown does on disk.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
from pathlib import Path

import gdown
import pytest

from anima_lora_flow.dataset.fetch import UnreachableError, is_transient
from anima_lora_flow.dataset.intake import prepare_dataset

from dataset_builders import captioned_zip, png_bytes

DRIVE_ID = "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"
STAMP = ".anima-download.json"
WHEN = "2024-01-02T03:04:05+00:00"


def seed(work: Path, count: int, *, stamp: bool = True) -> Path:
    """The cache folder as an earlier download left it: the zip, and the stamp saying when it finished."""
    folder = work / "downloads" / f"drive-{DRIVE_ID}"
    folder.mkdir(parents=True)
    (folder / "set.zip").write_bytes(captioned_zip(count))
    if stamp:
        (folder / STAMP).write_text(json.dumps({"file": "set.zip", "downloaded_at": WHEN}))
    return folder


def refuse_every_connection(monkeypatch) -> None:
    """Route https through a proxy port nothing listens on: real gdown, no network, a real refusal."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def gdown_like(new_zip: bytes):
    """What gdown.download does on disk with resume=True: keep a finished file, else write the new one."""
    calls = []

    def download(*, id, output, quiet, resume, retries):
        calls.append(id)
        target = Path(output) / "set.zip"
        if not (resume and target.is_file()):
            target.write_bytes(new_zip)
        return str(target)

    download.calls = calls
    return download


def notices(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "anima_lora_flow.dataset"]


def test_reused_copy_names_itself_its_date_and_the_folder_to_delete(tmp_path: Path, monkeypatch, caplog):
    folder = seed(tmp_path / "work", 2)
    monkeypatch.setattr(gdown, "download", gdown_like(captioned_zip(5)))  # Drive now holds 5 images
    with caplog.at_level(logging.WARNING, logger="anima_lora_flow.dataset"):
        assert prepare_dataset(DRIVE_ID, tmp_path / "work").trainable_count == 2
    assert notices(caplog) == [
        f"Google Drive file {DRIVE_ID}: using the copy downloaded {WHEN} ({folder / 'set.zip'}); "
        f"Drive files are not checked for updates: delete {folder} to download it again"
    ]


def test_deleting_the_named_folder_downloads_the_new_file(tmp_path: Path, monkeypatch, caplog):
    folder = seed(tmp_path / "work", 2)
    download = gdown_like(captioned_zip(5))
    monkeypatch.setattr(gdown, "download", download)
    shutil.rmtree(folder)  # what the notice tells the user to do
    with caplog.at_level(logging.WARNING, logger="anima_lora_flow.dataset"):
        assert prepare_dataset(DRIVE_ID, tmp_path / "work").trainable_count == 5
    assert notices(caplog) == [] and download.calls == [DRIVE_ID]
    stamp = json.loads((folder / STAMP).read_text())
    assert stamp["file"] == "set.zip" and stamp["downloaded_at"] > WHEN


def test_copy_from_before_stamps_is_dated_by_its_file(tmp_path: Path, monkeypatch, caplog):
    folder = seed(tmp_path / "work", 2, stamp=False)
    monkeypatch.setattr(gdown, "download", gdown_like(captioned_zip(5)))
    with caplog.at_level(logging.WARNING, logger="anima_lora_flow.dataset"):
        prepare_dataset(DRIVE_ID, tmp_path / "work")
    [notice] = notices(caplog)
    assert "using the copy downloaded 20" in notice and f"delete {folder} to download it again" in notice
    assert json.loads((folder / STAMP).read_text())["file"] == "set.zip"


def test_unreachable_drive_uses_the_finished_copy_with_a_notice(tmp_path: Path, monkeypatch, caplog):
    folder = seed(tmp_path / "work", 3)
    refuse_every_connection(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="anima_lora_flow.dataset"):
        assert prepare_dataset(DRIVE_ID, tmp_path / "work").trainable_count == 3
    [notice] = notices(caplog)
    assert notice.startswith(f"Google Drive file {DRIVE_ID}: using the copy downloaded {WHEN} in {folder}, as Google Drive cannot be reached")
    assert "(connection refused)" in notice


def test_unreachable_drive_without_a_finished_copy_fails(tmp_path: Path, monkeypatch):
    """A leftover file without a stamp may be a half download: it is not trained when Drive cannot say."""
    seed(tmp_path / "work", 3, stamp=False)
    refuse_every_connection(monkeypatch)
    with pytest.raises(UnreachableError, match=r"\(connection refused\): check the URL and the network") as caught:
        prepare_dataset(DRIVE_ID, tmp_path / "work")
    assert not is_transient(caught.value)


def test_reused_folder_says_only_new_files_are_fetched(tmp_path: Path, monkeypatch, caplog):
    folder = tmp_path / "work" / "downloads" / f"drive-{DRIVE_ID}"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(png_bytes())
    (folder / STAMP).write_text(json.dumps({"file": None, "downloaded_at": WHEN}))

    def download_folder(*, id, output, quiet, resume, retries):  # gdown keeps finished files with resume=True
        (Path(output) / "b.png").write_bytes(png_bytes((400, 256)))
        return [str(Path(output) / "a.png"), str(Path(output) / "b.png")]

    monkeypatch.setattr(gdown, "download_folder", download_folder)
    with caplog.at_level(logging.WARNING, logger="anima_lora_flow.dataset"):
        report = prepare_dataset(f"https://drive.google.com/drive/folders/{DRIVE_ID}", tmp_path / "work")
    assert sorted(i.path for i in report.images) == ["a.png", "b.png"]  # the stamp is never taken for data
    assert notices(caplog) == [
        f"Google Drive folder {DRIVE_ID}: files already in {folder} (downloaded {WHEN}) were reused and only new ones "
        "fetched; Drive files are not checked for updates: delete that folder to download them all again"
    ]
