"""Source parsing, Drive error translation, http(s) with resume against a real local server, memory://."""

from __future__ import annotations

import http.server
import io
import threading
import zipfile
from pathlib import Path

import gdown
import pytest
import requests

from anima_lora_flow.dataset import fetch
from anima_lora_flow.dataset.fetch import FetchError, classify_source, download_http, is_transient, parse_drive_link
from anima_lora_flow.dataset.intake import prepare_dataset
from anima_lora_flow.dataset.report import DatasetError
from anima_lora_flow.errors import UserInputError

from dataset_builders import png_bytes

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


def test_unknown_protocol_names_the_fix(tmp_path: Path):
    with pytest.raises(DatasetError, match="install the filesystem's package"):
        fetch.download_fsspec("nosuchproto://bucket/x.zip", tmp_path)
