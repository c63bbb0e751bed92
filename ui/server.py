"""`anima-lora ui`: a local Prefect server with its UI, started as a logged subprocess and stopped by pid file.

POSIX only (Colab, Kaggle, Linux, macOS): the server runs in its own session so `--stop` can end its process group.

Why not Prefect's own `prefect server start --background` / `prefect server stop` (read in Prefect 3.9.1,
prefect/cli/_server_utils.py `_run_in_background` and prefect/cli/server.py `stop`): the background
server's output goes to a pipe that nobody reads once the command exits, so a server that fails to
start leaves no log to show; the command returns before /api/health answers; the server stays in the
caller's process group, so a Ctrl-C in the terminal stops it along with the flow (the case
`server_for_this_command` exists for); and `stop` sends one SIGTERM and neither waits for the server
to end nor kills one that does not. Prefect's own `prefect server start` is what runs, in the foreground
of a process this module starts in its own session, logging to a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..core.processes import free_port, pid_alive
from ..errors import UserInputError, setting

PID_FILE = "anima-ui-server.json"  # not Prefect's own server.pid, which `prefect server start -b` owns
LOG_FILE = "anima-ui-server.log"
RUN_LOG_FILE = "anima-run-server.log"  # the per-command servers of server_for_this_command


@dataclass(frozen=True)
class UiServer:
    """A running Prefect server: where it listens and where it logs."""

    pid: int
    host: str
    port: int
    log: Path
    ui_url: str  # what a browser should open (the Colab proxy URL on Colab)
    started: bool  # False when an already-running server was found

    @property
    def api_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.port}/api"


def prefect_home(home: Path | None = None) -> Path:
    """The local PREFECT_HOME (configure_prefect_environment's), or `home`; never Google Drive."""
    from ..platforms.prefect_env import configure_prefect_environment
    from ..storage.drive import is_drive_path

    if home is None:
        home = Path(configure_prefect_environment()["PREFECT_HOME"])
    home = Path(home).expanduser().absolute()
    # SQLite in WAL mode is unsafe on a FUSE mount (prefect.md §1).
    if is_drive_path(str(home)):
        raise UserInputError(f"PREFECT_HOME {home} is on Google Drive; use a local folder (the default is under ~/.cache)")
    home.mkdir(parents=True, exist_ok=True)
    return home


def start_ui_server(port: int = 4200, *, home: Path | None = None, host: str = "127.0.0.1",
                    timeout_s: float = 90) -> UiServer:
    """Start `prefect server start` in the background (or find ours already running) and wait for /api/health.

    Raises:
        UserInputError: the port is taken by something else (pass another port).
        RuntimeError: the server exited during start-up (the message names its log file).
        TimeoutError: /api/health did not answer within `timeout_s` (the server is stopped; see its log).
    """
    home = prefect_home(home)
    running = _running_server(home)
    if running is not None:
        if running["port"] != port:
            raise UserInputError(
                f"a UI server started earlier is already running on port {running['port']}; "
                f"use that one, or run `anima-lora ui --stop` first"
            )
        server = UiServer(running["pid"], running.get("host", host), port, Path(running["log"]),
                          running.get("ui_url") or _local_ui_url(host, port), started=False)
        os.environ["PREFECT_API_URL"] = server.api_url
        return server
    if not _port_free(host, port):
        raise UserInputError(f"port {port} on {host} is already in use by another program; pick another with {setting('port')}",
                             field="port")

    proxy_url = _colab_proxy_url(port)
    ui_url = proxy_url or _local_ui_url(host, port)
    log_path = home / LOG_FILE
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The browser calls this URL, not the VM's 127.0.0.1; set it always, because the UI otherwise
        # falls back to PREFECT_API_URL (maybe Prefect Cloud) or to port 4200 whatever --port says.
        "PREFECT_UI_API_URL": f"{ui_url.rstrip('/')}/api",
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
    }
    process = _spawn_server(["--host", host, "--port", str(port)], env, log_path)
    _write_pid_file(home, {"pid": process.pid, "host": host, "port": port, "log": str(log_path), "ui_url": ui_url})
    try:
        _wait_healthy(process, host, port, log_path, timeout_s)
    except BaseException:
        _kill_group(process.pid)
        (home / PID_FILE).unlink(missing_ok=True)
        raise
    server = UiServer(process.pid, host, port, log_path, ui_url, started=True)
    os.environ["PREFECT_API_URL"] = server.api_url
    return server


@contextlib.contextmanager
def server_for_this_command(home: Path | None = None, timeout_s: float = 90) -> Iterator[str | None]:
    """The Prefect API a CLI command runs its flow against; yields its URL (None: the user's own API).

    Prefect's own temporary server runs in the caller's process group, so a Ctrl-C in the terminal
    kills it together with the flow, whose clean-up then retries the dead API for minutes. This one
    runs in its own session (API only, no services), so the flow can record the interruption and
    say how to resume; it is stopped when the command ends. A running `anima-lora ui` server is used
    as is, and left running.
    """
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        yield None  # the user's API, or prefect already imported with its settings (a test harness, a notebook)
        return
    home = prefect_home(home)
    running = _running_server(home)
    if running is not None:
        url = f"http://{_client_host(running.get('host', '127.0.0.1'))}:{running['port']}/api"
        with _api_url(url):
            yield url
        return
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log_path = home / RUN_LOG_FILE
    process = _spawn_server(["--host", "127.0.0.1", "--port", str(port), "--no-services", "--no-ui"], env, log_path)
    try:
        _wait_healthy(process, "127.0.0.1", port, log_path, timeout_s)
        with _api_url(f"http://127.0.0.1:{port}/api") as url:
            yield url
    finally:
        _kill_group(process.pid)


@contextlib.contextmanager
def _api_url(url: str) -> Iterator[str]:
    os.environ["PREFECT_API_URL"] = url  # read by prefect when it is first imported
    try:
        yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def _spawn_server(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`prefect server start ARGS` in its own session, logging to `log_path`."""
    env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}  # the server itself must not talk to another API
    command = [sys.executable, "-m", "prefect", "server", "start", *args]
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        log.flush()
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


def stop_ui_server(home: Path | None = None) -> bool:
    """Stop the server recorded in PREFECT_HOME; False when none was running (a stale pid file is removed)."""
    home = prefect_home(home)
    running = _running_server(home)
    (home / PID_FILE).unlink(missing_ok=True)
    if running is None:
        return False
    _kill_group(running["pid"])
    return True


def run_ui(args) -> int:
    """The `anima-lora ui [--port N] [--stop]` command."""
    if args.stop:
        stopped = stop_ui_server()
        print("stopped the Prefect UI server" if stopped else "no Prefect UI server was running")
        return 0
    if _running_server(prefect_home()) is None:
        print(f"starting a Prefect server on port {args.port} (about 20-30 s the first time)...", flush=True)
    server = start_ui_server(args.port)
    print(("started" if server.started else "already running") + f": Prefect UI at {server.ui_url}")
    if not _colab_iframe(server.port):
        print(f"open {server.ui_url} in a browser (on Colab, in a notebook cell: "
              f"from google.colab import output; output.serve_kernel_port_as_iframe({server.port}))")
    print(f"server log: {server.log}")
    print("runs show up there only when they talk to this server; in this shell run:")
    print(f"  export PREFECT_API_URL={server.api_url}")
    print(f"(in a notebook: os.environ['PREFECT_API_URL'] = '{server.api_url}' before the first prefect import)")
    print("This server's history lives on this machine and ends with the session. To keep run history across "
          "sessions, use Prefect Cloud: set PREFECT_API_URL and PREFECT_API_KEY (from Colab or Kaggle secrets).")
    print("Stop it with: anima-lora ui --stop")
    return 0


# --- helpers ----------------------------------------------------------------------------------
def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _local_ui_url(host: str, port: int) -> str:
    return f"http://{_client_host(host)}:{port}"


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _health_ok(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{_client_host(host)}:{port}/api/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait_healthy(process: subprocess.Popen, host: str, port: int, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the Prefect server exited with code {process.returncode} while starting; see {log_path}:\n"
                + _log_tail(log_path)
            )
        if _health_ok(host, port):
            return
        time.sleep(0.5)
    raise TimeoutError(
        f"the Prefect server did not answer on http://{_client_host(host)}:{port}/api/health within {timeout_s:.0f} s; "
        f"see {log_path}"
    )


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _write_pid_file(home: Path, record: dict) -> None:
    tmp = home / (PID_FILE + ".tmp")
    tmp.write_text(json.dumps(record), encoding="utf-8")
    tmp.replace(home / PID_FILE)


def _running_server(home: Path) -> dict | None:
    """The pid file's record when its process is alive and is a Prefect server; None for none or a stale file."""
    try:
        record = json.loads((home / PID_FILE).read_text(encoding="utf-8"))
        pid, port = int(record["pid"]), int(record["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _is_prefect_server(pid):
        return None
    return {**record, "pid": pid, "port": port}


def _is_prefect_server(pid: int) -> bool:
    if not _alive(pid):
        return False
    # A pid from an old session may belong to another program now; check what it runs where we can.
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return True
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return b"prefect" in b" ".join(args) and b"server" in args


def _reap(pid: int) -> None:
    """Collect our own exited child, so a dead server does not linger as a zombie that looks alive."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _alive(pid: int) -> bool:
    _reap(pid)
    return pid_alive(pid)


def _kill_group(pid: int, grace_s: float = 10) -> None:
    """SIGTERM the server's process group (it was started in its own session), then SIGKILL after `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.2)


def _colab_proxy_url(port: int) -> str | None:
    """The browser-facing URL of `port` through Colab's proxy, or None outside a Colab kernel."""
    try:
        from google.colab import output  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return str(output.eval_js(f"google.colab.kernel.proxyPort({port})")).rstrip("/")
    except Exception:  # noqa: BLE001 - `!anima-lora ui` runs outside the kernel, where eval_js cannot work
        return None


def _colab_iframe(port: int) -> bool:
    """Show the UI inside the notebook output on Colab; False where that is not possible."""
    try:
        from google.colab import output  # type: ignore[import-not-found]
    except ImportError:
        return False
    try:
        output.serve_kernel_port_as_iframe(port, height=800)
    except Exception:  # noqa: BLE001 - outside the kernel (a `!` shell) there is no frontend to draw in
        return False
    return True
