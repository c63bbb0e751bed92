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
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..core.processes import free_port, guard_group, pid_alive, stop_group
from ..errors import UserInputError, setting
from ..platforms.prefect_env import UI_PID_FILE, History, configured_api, running_ui_history, ui_server_record, user_history

PID_FILE = UI_PID_FILE
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


# The per-command server records what a run's history needs and nothing else: the task-run recorder
# and the event persister (`--no-services` turns those off too, and then no task run is recorded), but
# none of the loops for deployments, workers, schedules and automations, which only a lasting server
# uses. Measured on 2 loaded cores (Prefect 3.9.1): start to /api/health about as fast as --no-services.
RUN_SERVER_SERVICES_OFF = ("SCHEDULER", "LATE_RUNS", "FOREMAN", "REPOSSESSOR", "CANCELLATION_CLEANUP",
                           "PAUSE_EXPIRATIONS", "CLEANUP_RECONCILER", "TRIGGERS", "EVENT_LOGGER")
RUN_SERVER_STOP_GRACE_S = 10.0  # SIGTERM lets it close its SQLite database cleanly


@contextlib.contextmanager
def server_for_this_command(home: Path | None = None, timeout_s: float = 90) -> Iterator[History]:
    """The Prefect API a CLI command runs its flow against; yields where its history is kept.

    The user's own API (environment, Prefect profile, Colab/Kaggle secret) is used as it is; so is a
    running `anima-lora ui` server, left running. Otherwise a temporary server records the run in
    PREFECT_HOME's database, where `anima-lora ui` finds it later. Prefect's own temporary server would
    run in the caller's process group, so a Ctrl-C in the terminal would kill it together with the flow,
    whose clean-up then retries the dead API for minutes. This one runs in its own session, so the flow
    can record the interruption and say how to resume; it is stopped when the command ends, and a
    watchdog stops it within seconds if this process dies without doing so (SIGKILL included).
    """
    api = configured_api()
    if api is not None:
        yield user_history(api)
        return
    if "prefect" in sys.modules:  # imported with its own settings before us (a test harness, a notebook)
        yield History(ui_url=None)
        return
    home = prefect_home(home)
    running = running_ui_history(home)
    if running is not None:
        with _api_url(running.api_url):
            yield running
        return
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           **{f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in RUN_SERVER_SERVICES_OFF},
           "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "[]"}
    log_path = home / RUN_LOG_FILE
    process = _spawn_server(["--host", "127.0.0.1", "--port", str(port), "--no-ui"], env, log_path)
    guard_group(process, grace_s=RUN_SERVER_STOP_GRACE_S)
    try:
        _wait_healthy(process, "127.0.0.1", port, log_path, timeout_s)
        # No UI outlives this server: Prefect's "View at http://127.0.0.1:PORT/runs/..." would be a dead link.
        with _api_url(f"http://127.0.0.1:{port}/api", ui_url="") as url:
            yield History(ui_url=None, home=home, api_url=url)
    finally:
        _kill_group(process.pid)


@contextlib.contextmanager
def _api_url(url: str, ui_url: str | None = None) -> Iterator[str]:
    os.environ["PREFECT_API_URL"] = url  # read by prefect when it is first imported
    if ui_url is not None:
        os.environ["PREFECT_UI_URL"] = ui_url
    try:
        yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        if ui_url is not None:
            os.environ.pop("PREFECT_UI_URL", None)


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
    return ui_server_record(home, reap=_reap)


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
    """Stop the server's process group (it was started in its own session), then wait for its leader to be gone.

    stop_group ends when no member runs (a zombie does not count); the leader's pid stays taken until it is
    reaped, by us when it is our child, so wait for that too: a caller may start the next server on its port.
    """
    stop_group(pid, grace_s)
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


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
