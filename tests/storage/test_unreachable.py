"""One classifier tells an unreachable host (name not resolved, connection refused) from every other failure,
whatever library raised it; the run store uses it to stop at once, with one line and exit 2."""

from __future__ import annotations

import socket
import time

import fsspec
import httpx
import pytest
import requests
from fsspec.spec import AbstractFileSystem

from anima_lora_flow.errors import UserInputError
from anima_lora_flow.storage import resolve_location, resolve_storage
from anima_lora_flow.storage.location import Unreachable, unreachable, unreachable_message


def closed_port() -> int:
    """A local port nothing listens on (bound, then released), so a connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raised(call) -> BaseException:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test inspects whatever the library raised
        return exc
    raise AssertionError("the call was expected to fail")


def test_requests_and_httpx_failures_are_classified_with_their_host():
    port = closed_port()
    assert unreachable(raised(lambda: requests.get("http://example.invalid/x", timeout=5))) == Unreachable(
        "name not resolved", "example.invalid", 80
    )
    assert unreachable(raised(lambda: requests.get(f"http://127.0.0.1:{port}/x", timeout=5))) == Unreachable(
        "connection refused", "127.0.0.1", port
    )
    assert unreachable(raised(lambda: httpx.get(f"http://127.0.0.1:{port}/x"))) == Unreachable("connection refused", "127.0.0.1", port)
    assert unreachable(raised(lambda: httpx.get("http://example.invalid/x"))).reason == "name not resolved"


def test_wrapped_and_grouped_errors_are_found_and_others_are_not():
    refused = raised(lambda: socket.create_connection(("127.0.0.1", closed_port()), timeout=5))
    try:
        raise RuntimeError("the filesystem gave up") from refused
    except RuntimeError as wrapped:
        assert unreachable(wrapped).reason == "connection refused"
    assert unreachable(ExceptionGroup("several", [ValueError("x"), refused])).reason == "connection refused"
    assert unreachable(ValueError("bad")) is None
    assert unreachable(PermissionError(13, "Permission denied")) is None


def test_a_slow_server_is_not_called_unreachable():
    """A timeout may heal: only names that do not resolve and refused connections are judged unreachable."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)  # accepts into the backlog, never answers
        port = listening.getsockname()[1]
        exc = raised(lambda: requests.get(f"http://127.0.0.1:{port}/x", timeout=0.3))
    assert isinstance(exc, requests.Timeout) and unreachable(exc) is None


def test_message_names_the_host_or_the_url():
    refused = raised(lambda: socket.create_connection(("127.0.0.1", closed_port()), timeout=5))
    assert unreachable_message("ftp://files.example/ds", refused) == (
        "cannot reach host 'files.example' (connection refused): check the URL and the network"
    )
    # gs://bucket names a bucket, not a host: the message names the URL instead of a made-up host
    assert unreachable_message("gs://bucket/runs", refused) == (
        "cannot reach the server for 'gs://bucket/runs' (connection refused): check the URL and the network"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host.invalid/runs", "cannot reach host 'host.invalid' (name not resolved): check the URL and the network"),
        ("ftp://127.0.0.1:{port}/runs", "cannot reach host '127.0.0.1:{port}' (connection refused): check the URL and the network"),
    ],
)
def test_unreachable_storage_is_bad_input_at_once(url, message):
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(UserInputError) as caught:
        resolve_storage(url.format(port=port))
    assert str(caught.value) == message.format(port=port)
    assert time.monotonic() - started < 5


def test_train_with_unreachable_storage_exits_2_with_one_line(tmp_path, capsys):
    from anima_lora_flow.cli import main

    started = time.monotonic()
    code = main(["train", "--dataset", str(tmp_path), "--storage", "ftp://host.invalid/runs", "--work-dir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - started < 10
    assert err == "error: cannot reach host 'host.invalid' (name not resolved): check the URL and the network\n"


def test_unknown_scheme_lists_what_storage_takes():
    with pytest.raises(UserInputError) as caught:
        resolve_location("foo://bar/runs")
    assert str(caught.value) == "cannot open storage 'foo://bar/runs': unknown URL scheme 'foo://'; use a folder, gs://, s3:// or hf://"


def test_known_scheme_without_its_package_says_what_to_install():
    import importlib.util

    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed here")
    with pytest.raises(UserInputError, match=r"cannot open storage 's3://bucket/runs': .*s3fs.*pip install s3fs"):
        resolve_location("s3://bucket/runs")


class _Refusing(AbstractFileSystem):
    """A store whose every call fails the way a real client does: with the error in `failure`."""

    protocol = "refusing"
    failure: BaseException = PermissionError(13, "Permission denied")

    def exists(self, path, **kwargs):
        raise self.failure


@pytest.fixture
def refusing_store():
    fsspec.register_implementation("refusing", _Refusing, clobber=True)  # stays registered: harmless, test-only name
    yield _Refusing
    _Refusing.failure = PermissionError(13, "Permission denied")
    _Refusing.clear_instance_cache()


def test_the_reachability_probe_judges_only_reachability(refusing_store):
    """Credentials and permissions fail where the store is first written, with their own handling."""
    assert resolve_storage("refusing://bucket/runs").root.endswith("bucket/runs")
    refusing_store.failure = raised(lambda: socket.create_connection(("127.0.0.1", closed_port()), timeout=5))
    refusing_store.clear_instance_cache()
    with pytest.raises(UserInputError, match=r"cannot reach the server for 'refusing://bucket/runs' \(connection refused\)"):
        resolve_storage("refusing://bucket/runs")
