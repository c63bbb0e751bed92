"""Source parsing, Drive error translation, http(s) with resume against a real local server, memory://."""

from __future__ import annotations

import http.server
import importlib.util
import io
import logging
import os
import threading
import time
import zipfile
from pathlib import Path

import gdown
import pytest
import requests

from anima_lora_flow.dataset import fetch
from anima_lora_flow.dataset.fetch import FetchError, classify_source, download_http, is_transient, parse_drive_link
from anima_lora_flow.dataset.intake import prepare_dataset
from anima_lora_flow.core.dataset_report import DatasetError
from anima_lora_flow.errors import UserInputError

from dataset_builders import captioned_zip, png_bytes

FILE_ID = "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("set/a.png", png_bytes())
        zf.writestr("set/a.txt", "1girl, solo")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"https://drive.google.com/file/d/{FILE_ID}/view?usp=sharing", (FILE_ID, False)),
        (f"https://drive.google.com/open?id={FILE_ID}", (FILE_ID, False)),
        (f"https://drive.google.com/uc?id={FILE_ID}&export=download", (FILE_ID, False)),
        (f"https://drive.google.com/drive/folders/{FILE_ID}?usp=drive_link", (FILE_ID, True)),
        (f"https://drive.google.com/drive/u/0/folders/{FILE_ID}", (FILE_ID, True)),
        (FILE_ID, (FILE_ID, False)),
        ("https://example.com/file/d/abc/view", None),
        ("my_dataset", None),
        ("1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms", ("1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms", False)),
        ("my_anime_character_dataset_v2", None),  # long folder names are words, not ids
        ("My_Anime_Character_Dataset_V2", None),
        ("training-images-2024-final-cut", None),
        ("1abcdefghijklmnopqrstuvwxyz012", None),  # no upper-case letter
        ("AbCdEfGhIjKlMnOpQrStUvWxYz", None),  # no digit
        ("1AbCdEfGhIjKlMnOpQrStUvWxYz" * 3, None),  # over 60 characters
        ("some/1AbCdEfGhIjKlMnOpQrStUvWxYz012345", None),  # a path, not an id
    ],
)
def test_parse_drive_link(text: str, expected):
    assert parse_drive_link(text) == expected


def test_classify_source(tmp_path: Path):
    (tmp_path / "d.zip").write_bytes(b"x")
    assert classify_source(str(tmp_path)).kind == "folder"
    assert classify_source(f"file://{tmp_path}").kind == "folder"
    assert classify_source(str(tmp_path / "d.zip")).kind == "file"
    assert classify_source(FILE_ID).kind == "drive-file"
    assert classify_source("https://example.com/d.zip").kind == "http"
    assert classify_source("gs://bucket/d.zip").kind == "fsspec"
    with pytest.raises(DatasetError, match="not found"):
        classify_source(str(tmp_path / "missing"))
    assert issubclass(DatasetError, UserInputError)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Too many users have viewed or downloaded this file recently. Please try accessing the file again later.", "quota"),
        ("Cannot retrieve the public link of the file. You may need to change the permission to 'Anyone with the link', or have had many accesses.", "quota"),
        ("Failed to retrieve folder contents (status code 403). You may need to change the permission", "not shared publicly"),
    ],
)
def test_gdown_errors_become_one_sentence(monkeypatch, tmp_path: Path, message: str, expected: str):
    def refuse(**kwargs):
        raise gdown.exceptions.FileURLRetrievalError(message)

    monkeypatch.setattr(gdown, "download", refuse)
    monkeypatch.setattr(gdown, "download_folder", refuse)
    for source in (FILE_ID, f"https://drive.google.com/drive/folders/{FILE_ID}"):
        with pytest.raises(DatasetError) as caught:
            prepare_dataset(source, tmp_path / "work")
        text = str(caught.value)
        assert expected in text and "'Anyone with the link'" in text and "copy it into your own Drive" in text
        assert "\n" not in text
        assert not is_transient(caught.value)


def test_drive_file_download_is_extracted(monkeypatch, tmp_path: Path):
    calls = []

    def fake_download(*, id, output, quiet, resume, retries):  # writes a real zip where gdown would
        calls.append((id, resume))
        path = Path(output) / "set.zip"
        path.write_bytes(zip_bytes())
        return str(path)

    monkeypatch.setattr(gdown, "download", fake_download)
    report = prepare_dataset(f"https://drive.google.com/file/d/{FILE_ID}/view", tmp_path / "work")
    assert calls == [(FILE_ID, True)] and report.trainable_count == 1


class _Server:
    """A real local http server serving one zip with Range support; the first response can be cut short."""

    def __init__(self, body: bytes, cut_first_at: int | None = None, status: int = 200):
        self.body, self.cut, self.status, self.requests = body, cut_first_at, status, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                rng = self.headers.get("Range")
                server.requests.append(rng)
                if server.status != 200:
                    self.send_error(server.status)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(server.body) - start))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.body) - 1}/{len(server.body)}")
                self.end_headers()
                end = server.cut if (server.cut and len(server.requests) == 1) else len(server.body)
                self.wfile.write(server.body[start:end])
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/data/set.zip"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(*args, **kwargs):
        servers.append(_Server(*args, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_http_zip_is_downloaded_and_validated(serve, tmp_path: Path):
    server = serve(zip_bytes())
    report = prepare_dataset(server.url, tmp_path / "work")
    assert report.trainable_count == 1 and report.source == server.url
    assert Path(report.root).is_relative_to(tmp_path / "work")


def test_http_download_resumes_with_range(serve, tmp_path: Path):
    body = bytes(range(256)) * 1600  # 400 KB: several chunks arrive before the cut
    server = serve(body, cut_first_at=200_000)
    dest = download_http(server.url, tmp_path / "set.zip", backoff=0.01)
    assert dest.read_bytes() == body
    assert server.requests[0] is None and len(server.requests) == 2
    resumed_at = int(server.requests[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 200_000
    assert not (tmp_path / "set.zip.part").exists()


@pytest.mark.parametrize(("status", "kind", "text"), [(404, DatasetError, "answered 404"), (403, DatasetError, "needs a login"), (503, FetchError, "after 2 tries")])
def test_http_errors(serve, tmp_path: Path, status: int, kind, text: str):
    server = serve(b"", status=status)
    with pytest.raises(kind, match=text) as caught:
        download_http(server.url, tmp_path / "x.zip", attempts=2, backoff=0.01)
    assert is_transient(caught.value) == (kind is FetchError)
    assert not (tmp_path / "x.zip").exists()


def test_transient_classification():
    assert is_transient(requests.ConnectionError("reset"))
    assert is_transient(TimeoutError())
    assert not is_transient(DatasetError("bad"))
    assert not is_transient(ValueError("bug"))


def test_fsspec_memory_zip_and_folder(memory_fs, tmp_path: Path):
    memory_fs.pipe("/data/set.zip", zip_bytes())
    report = prepare_dataset("memory://data/set.zip", tmp_path / "work")
    assert report.trainable_count == 1 and report.images[0].caption == "1girl, solo"

    memory_fs.pipe("/folder/b.png", png_bytes())
    memory_fs.pipe("/folder/b.txt", b"solo")
    report = prepare_dataset("memory://folder", tmp_path / "work")
    assert [i.path for i in report.images] == ["b.png"]
    with pytest.raises(DatasetError, match="does not exist"):
        prepare_dataset("memory://nothing/here.zip", tmp_path / "work")


def test_unknown_scheme_names_the_schemes_that_work(tmp_path: Path, capsys):
    from anima_lora_flow.cli import main

    assert main(["validate", "nosuchproto://bucket/x.zip", "--work-dir", str(tmp_path / "w")]) == 2
    assert capsys.readouterr().err == (
        "error: unknown URL scheme 'nosuchproto://'; use a local path, http(s)://, a Google Drive link, gs://, s3:// or hf://\n"
    )


def test_known_scheme_without_its_package_says_what_to_install(tmp_path: Path):
    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    with pytest.raises(DatasetError, match=r"cannot open gs://bucket/x.zip: .*gcsfs.*; install it with: pip install gcsfs"):
        fetch.download_fsspec("gs://bucket/x.zip", tmp_path)


def test_mistyped_long_folder_name_is_not_found_not_a_drive_download(tmp_path: Path, monkeypatch, capsys):
    """The user meant a local folder: the answer is 'check the path', with no Drive download and no sharing hint."""
    from anima_lora_flow.cli import main

    def no_drive(**kwargs):
        raise AssertionError("a folder name must not be downloaded from Google Drive")

    monkeypatch.setattr(gdown, "download", no_drive)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "my_anime_character_dataset_v2", "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "'my_anime_character_dataset_v2' not found: no such folder or file; check the path" in err
    assert "Anyone with the link" not in err and err.count("\n") == 1


def test_real_looking_bare_id_still_goes_to_drive(tmp_path: Path, monkeypatch):
    calls = []

    def fake_download(*, id, output, quiet, resume, retries):
        calls.append(id)
        path = Path(output) / "set.zip"
        path.write_bytes(zip_bytes())
        return str(path)

    monkeypatch.setattr(gdown, "download", fake_download)
    assert prepare_dataset(FILE_ID, tmp_path / "work").trainable_count == 1 and calls == [FILE_ID]


# --- a real `python -m http.server`: HEAD, Last-Modified, Content-Type by extension ---------------------


@pytest.fixture
def static_site(tmp_path: Path):
    """A folder served by http.server's SimpleHTTPRequestHandler, as `python -m http.server` serves it."""
    site = tmp_path / "site"
    site.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(site), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield site, f"http://127.0.0.1:{httpd.server_port}", httpd
    httpd.shutdown()
    httpd.server_close()


def test_changed_file_on_the_server_is_downloaded_again(static_site, tmp_path: Path):
    """The URL's cached copy was reused forever: replacing data.zip on the server must change what is trained."""
    site, base, _ = static_site
    (site / "data.zip").write_bytes(captioned_zip(2))
    os.utime(site / "data.zip", (1_700_000_000, 1_700_000_000))
    assert prepare_dataset(f"{base}/data.zip", tmp_path / "work").trainable_count == 2
    assert prepare_dataset(f"{base}/data.zip", tmp_path / "work").trainable_count == 2  # unchanged: reused

    (site / "data.zip").write_bytes(captioned_zip(6))
    os.utime(site / "data.zip", (1_700_000_100, 1_700_000_100))
    assert prepare_dataset(f"{base}/data.zip", tmp_path / "work").trainable_count == 6


def test_unchanged_file_is_not_downloaded_twice(static_site, tmp_path: Path):
    site, base, _ = static_site
    (site / "data.zip").write_bytes(captioned_zip(1))
    dest = download_http(f"{base}/data.zip", tmp_path / "dl" / "data.zip")
    before = dest.stat().st_mtime_ns
    assert download_http(f"{base}/data.zip", dest) == dest and dest.stat().st_mtime_ns == before


def test_unreachable_server_uses_the_cached_copy_with_a_notice(static_site, tmp_path: Path, caplog):
    site, base, httpd = static_site
    (site / "data.zip").write_bytes(captioned_zip(2))
    assert prepare_dataset(f"{base}/data.zip", tmp_path / "work").trainable_count == 2
    httpd.shutdown()
    httpd.server_close()
    with caplog.at_level(logging.WARNING, logger="anima_lora_flow.dataset"):
        assert prepare_dataset(f"{base}/data.zip", tmp_path / "work").trainable_count == 2
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and "using the copy downloaded 20" in notices[0] and "cannot be reached" in notices[0]


@pytest.mark.parametrize("page", ["", "share.html"])
def test_url_of_a_web_page_says_so_not_corrupt_archive(static_site, tmp_path: Path, capsys, page: str):
    """Pasting a share page (or a directory listing) is the common mistake; the answer names the direct link."""
    from anima_lora_flow.cli import main

    site, base, _ = static_site
    (site / "share.html").write_text("<!DOCTYPE html><html><body>Download data.zip</body></html>")
    assert main(["validate", f"{base}/{page}", "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert f"{base}/{page} returned a web page (text/html), not an archive; use the file's direct download link" in err
    assert "corrupt" not in err and err.count("\n") == 1


def test_mislabelled_web_page_is_still_named_a_web_page(serve, tmp_path: Path):
    """A server that sends HTML as application/octet-stream: the saved file is recognised as a page, not a bad zip."""
    server = serve(b"<!doctype html>\n<html><body>sign in</body></html>")
    with pytest.raises(DatasetError, match=r"set.zip is a web page \(HTML\), not an archive; use the file's direct download link"):
        prepare_dataset(server.url, tmp_path / "work")


def test_unresolvable_host_fails_at_once_without_retries(tmp_path: Path, capsys):
    """A DNS failure cannot heal during a backoff: one try, one line, exit 2 (it took 30 s of retries)."""
    from anima_lora_flow.cli import main

    started = time.monotonic()
    assert main(["validate", "http://example.invalid/ds.zip", "--work-dir", str(tmp_path / "w")]) == 2
    assert time.monotonic() - started < 5
    assert capsys.readouterr().err == "error: cannot reach host 'example.invalid' (name not resolved): check the URL and the network\n"
