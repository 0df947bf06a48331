"""Real servers for tests: PostgreSQL databases, background processes, free ports, HTTP waits.

``.ci/run`` installs PostgreSQL and Chromium from Debian packages and exports
``EMBEDLAB_TEST_POSTGRES_URL`` (a role that may create databases) and
``EMBEDLAB_TEST_CHROMIUM``. With ``CI`` set a missing one fails the test;
elsewhere the test skips, naming what is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

POSTGRES_ENV = "EMBEDLAB_TEST_POSTGRES_URL"
CHROMIUM_ENV = "EMBEDLAB_TEST_CHROMIUM"
PROJECT = Path(__file__).resolve().parents[1]


def unavailable(reason: str) -> None:
    """Fail under CI (where .ci/run provides the system packages), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: .ci/run should have provided it)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- PostgreSQL ---------------------------------------------------------------

def postgres_admin_url() -> str:
    """The URL of a role that may create databases; fails/skips when there is none or it is down."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        unavailable(f"no PostgreSQL: set {POSTGRES_ENV}=postgresql://USER:PASSWORD@127.0.0.1:5432/DB "
                    f"(a role with CREATEDB; .ci/run creates one)")
    import psycopg2

    try:
        psycopg2.connect(libpq_url(url), connect_timeout=5).close()
    except psycopg2.OperationalError as exc:
        unavailable(f"PostgreSQL at {_redacted(url)} does not answer: {exc}")
    return url


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}" if user else netloc))


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def sqlalchemy_url(url: str) -> str:
    """The URL for SQLAlchemy users (Optuna, MLflow): SQLAlchemy 2.1 maps a bare
    ``postgresql://`` to psycopg 3, the project ships psycopg2."""
    return "postgresql+psycopg2://" + url.split("://", 1)[1]


def libpq_url(url: str) -> str:
    """The URL for psycopg2 / libpq (no SQLAlchemy driver suffix)."""
    return "postgresql://" + url.split("://", 1)[1]


@contextlib.contextmanager
def fresh_database(prefix: str = "embedlab_t") -> Iterator[str]:
    """A new, empty PostgreSQL database for one test (dropped afterwards): its
    SQLAlchemy URL (``postgresql+psycopg2://``, as Optuna and MLflow take it)."""
    import psycopg2
    from psycopg2 import sql

    admin = libpq_url(postgres_admin_url())
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"

    def execute(statement) -> None:
        conn = psycopg2.connect(admin, connect_timeout=10)
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield sqlalchemy_url(_with_database(admin, name))
    finally:
        # FORCE (PostgreSQL 13+): a server or worker still connected must not keep it alive.
        execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --- Chromium -----------------------------------------------------------------

def chromium_executable() -> str:
    path = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path or not os.access(path, os.X_OK):
        unavailable(f"no Chromium: install Debian's `chromium` or set {CHROMIUM_ENV}")
    return path


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


# --- processes ------------------------------------------------------------------

@contextlib.contextmanager
def process_group(cmd: list[str], log: Path, cwd: Path | None = None,
                  env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Start cmd in its own process group (output to log); kill the whole group on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; its workers may still be there (same group).
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Until url answers 200; fails early with the log when the process dies."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited ({proc.returncode}) before {url} answered:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path, chars: int = 4000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


def artifact_path(name: str) -> Path:
    """Where tests leave files for people to look at (screenshots): $EMBEDLAB_TEST_ARTIFACTS or test-artifacts/."""
    root = Path(os.environ.get("EMBEDLAB_TEST_ARTIFACTS") or PROJECT / "test-artifacts")
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# --- a store holding real runs ----------------------------------------------------

_DRIP_STORES: dict[str, Path] = {}


def drip_store(tmp_path_factory, tiny_demo: Path) -> Path:
    """A tiny project whose sqlite store (``mlflow.db``) holds two finished drip runs,
    ``drip/weak`` and ``drip/strong`` (query augmentation intensity 0.3 and 0.9,
    two epochs each). Built once per session and shared: treat as read-only."""
    if "drip" in _DRIP_STORES:
        return _DRIP_STORES["drip"]
    import yaml

    from conftest import run, tiny_params

    root = tmp_path_factory.mktemp("drip_store")
    shutil.copytree(tiny_demo, root / "data" / "raw")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    for name, intensity in (("weak", "0.3"), ("strong", "0.9")):
        run(["embedlab", "drip", "--n-facebook-samples", "8", "--epochs", "2", "--name", name,
             "--qry-augs-intensity", intensity], root, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
    _DRIP_STORES["drip"] = root
    return root


# --- the MLflow tracking server (`make mlflow-server`) --------------------------------

@contextlib.contextmanager
def mlflow_server(backend_uri: str, folder: Path) -> Iterator[tuple[str, Path, Path]]:
    """``make mlflow-server`` on a free loopback port with this backend store and
    ``folder/artifacts`` as its artifact root: (URL, artifact root, log)."""
    from conftest import cli_env

    port = free_port()
    artifacts = folder / "server-artifacts"
    log = folder / "mlflow-server.log"
    # -o: never (re)install the venv from here; the tests already run in it.
    cmd = ["make", "-s", "-C", str(PROJECT), "-o", ".venv/.installed", "mlflow-server",
           f"MLFLOW_BACKEND_URI={backend_uri}", f"MLFLOW_ARTIFACTS={artifacts}", f"MLFLOW_PORT={port}",
           "MLFLOW_WORKERS=1"]
    # The GenAI job runner (a pool of huey consumers) has nothing to do here; spare the CPU.
    env = cli_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with process_group(cmd, log, env=env) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc, log)
        yield url, artifacts, log
