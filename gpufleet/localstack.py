"""Real Mosquitto, InfluxDB 1.6 and an nginx v2-write forwarder on free loopback ports.

Used by the pytest fixtures (tests/conftest.py) and by `gpufleet demo`, so it lives in the
package. Everything listens on 127.0.0.1 only and keeps its config, data and logs inside the
given work folder. Every wait is bounded: a service that is not ready after READY_TIMEOUT_S
raises ServiceError carrying the tail of its log.

Why nginx: the collector writes with influxdb-client, which speaks the v2 API
(`POST /api/v2/write?org=O&bucket=B&precision=P`). InfluxDB 1.6 (Debian bookworm's package)
only has the v1 `/write?db=B&precision=p` (the v2 compat endpoint came in 1.8). The nginx
front rewrites the one endpoint and proxies everything else unchanged.

    with Mosquitto(tmp / "mqtt") as broker, InfluxDB(tmp / "influx") as influx:
        influx.create_database("fleet")
        ...  # agent gets broker.url, collector gets influx.url
        influx.rows('SELECT * FROM "gpu"', db="fleet")
"""

from __future__ import annotations

import atexit
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from gpufleet.influxql import answer_error, ident, rows_of

if TYPE_CHECKING:
    from gpufleet.mqtt import TlsFiles

HOST = "127.0.0.1"
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 40
MQTT_MAX_PACKET_BYTES = 1024 * 1024  # a whole MQTT packet; agent messages are far smaller

# Debian paths first: /usr/sbin is not on a non-root user's PATH.
_BINARIES = {
    "mosquitto": "/usr/sbin/mosquitto",
    "influxd": "/usr/bin/influxd",
    "nginx": "/usr/sbin/nginx",
}


class ServiceError(RuntimeError):
    """A local service could not be started, or answered with an error."""


class InfluxQueryError(ServiceError):
    """InfluxDB rejected an InfluxQL statement (the message is InfluxDB's own)."""


def find_binary(name: str) -> str | None:
    default = _BINARIES[name]
    if os.access(default, os.X_OK):
        return default
    return shutil.which(name)


def missing_binaries() -> list[str]:
    """Names of the service binaries that are not installed (`make deps` installs them)."""
    return [name for name in _BINARIES if find_binary(name) is None]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the kernel picks it for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _require_binary(name: str) -> str:
    path = find_binary(name)
    if path is None:
        raise ServiceError(f"{name} is not installed; run `make deps` to install it")
    return path


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


def _current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


# MQTT 3.1.1 CONNECT (clean session, keep-alive 60 s, empty client id) and the CONNACK
# "accepted" it must get back; DISCONNECT ends it politely. A bare TCP connect is not enough:
# a stranger that took the port in the meantime would look ready while our broker has exited.
_MQTT_CONNECT = bytes.fromhex("100c00044d5154540402003c0000")
_MQTT_CONNACK_OK = bytes.fromhex("20020000")
_MQTT_DISCONNECT = bytes.fromhex("e000")


def _mqtt_answers(port: int, tls: ssl.SSLContext | None = None) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as raw:
            # ssl.SSLError is an OSError too: a TLS listener that is not up yet reads as not ready.
            with tls.wrap_socket(raw, server_hostname=HOST) if tls else raw as sock:
                sock.sendall(_MQTT_CONNECT)
                answer = sock.recv(len(_MQTT_CONNACK_OK))
                sock.sendall(_MQTT_DISCONNECT)
    except OSError:
        return False
    return answer == _MQTT_CONNACK_OK


def _http(method: str, url: str, data: bytes | None = None) -> tuple[int, bytes]:
    """(status, body) for any HTTP answer; urllib raises on 4xx/5xx, which we want as values."""
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _pings(url: str) -> bool:
    try:
        status, _ = _http("GET", url + "/ping")
    except OSError:
        return False
    return status == 204


# Last resort for a test run or demo that dies with an exception before stopping its services:
# daemons run in their own session (no Ctrl-C from the terminal), so nobody else would stop them.
_running: set[_Daemon] = set()


@atexit.register
def _stop_leftovers() -> None:
    for daemon in list(_running):
        daemon.stop()


class _Daemon:
    """One foreground server process, its log file and its readiness probe."""

    def __init__(self, name: str, argv: list[str], log_path: Path, ready: Callable[[], bool]):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.ready = ready
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
        # The server and we both append to the log (O_APPEND), so its own log lines and anything
        # it prints before the log is open (config errors) end up in the same file.
        with self.log_path.open("ab") as log:
            # A new session: Ctrl-C in the demo's terminal must not reach the services before
            # the demo has stopped the agent and collector that use them.
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        _running.add(self)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise ServiceError(self._failure(f"exited with code {code} while starting"))
            if self.ready() and self.proc.poll() is None:
                return
            time.sleep(0.05)
        self.stop()
        raise ServiceError(self._failure(f"was not ready after {READY_TIMEOUT_S:.0f} s"))

    def _failure(self, what: str) -> str:
        command = " ".join(self.argv)
        return f"{self.name} {what}: {command}\n--- {self.log_path} ---\n{self.log_tail()}"

    def stop(self) -> None:
        """SIGTERM (each server saves its state on it), then SIGKILL the whole process group."""
        proc, self.proc = self.proc, None
        _running.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._kill_group(proc)

    def kill(self) -> None:
        """A crash: SIGKILL, nothing saved. For fault tests."""
        proc, self.proc = self.proc, None
        _running.discard(self)
        if proc is not None and proc.poll() is None:
            self._kill_group(proc)

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        # The group, not just the pid: nginx workers outlive a SIGKILLed master.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(STOP_TIMEOUT_S)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines)


class _Service:
    """start/stop/restart and `with` for a set of daemons that start in order."""

    _daemons: list[_Daemon]

    def start(self) -> Self:
        try:
            for daemon in self._daemons:
                daemon.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for daemon in reversed(self._daemons):
            daemon.stop()

    def restart(self) -> None:
        """Stop and start again on the same ports, keeping the data."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL, as in a crash: Mosquitto loses what it had not saved. start() works after."""
        for daemon in reversed(self._daemons):
            daemon.kill()

    @property
    def running(self) -> bool:
        return all(daemon.running for daemon in self._daemons)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(
            f"--- {daemon.log_path} ---\n{daemon.log_tail(lines)}" for daemon in self._daemons
        )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Mosquitto(_Service):
    """A Mosquitto 2.0 broker on a free loopback port, persisting into `workdir/mosquitto/`.

    `extra_conf` is appended to the generated config (later lines win for single-valued options).
    With `tls`, the plain anonymous listener is left out: `extra_conf` must itself open a TLS
    listener on `port` (e.g. the shipped systemd/mosquitto/gpufleet.conf adapted to test paths),
    `url` becomes mqtts://, and the readiness probe connects with these client files. Give the
    probe a certificate of its own: its clean-session CONNECT would end the stored session of a
    client with the same identity (use_username_as_clientid).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        port: int | None = None,
        *,
        extra_conf: str | None = None,
        tls: TlsFiles | None = None,
    ):
        self.dir = Path(workdir).resolve() / "mosquitto"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.tls = tls
        self.conf_path = self.dir / "mosquitto.conf"
        argv = [_require_binary("mosquitto"), "-c", str(self.conf_path)]
        self._daemon = _Daemon("mosquitto", argv, self.dir / "mosquitto.log", self._ready)
        self._daemons = [self._daemon]

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._daemon.proc.pid if self._daemon.proc else None

    def start(self) -> Self:
        self.conf_path.write_text(self._config(), encoding="utf-8")
        return super().start()

    def _ready(self) -> bool:
        return _mqtt_answers(self.port, self.tls.context() if self.tls else None)

    def _config(self) -> str:
        plain_listener = [] if self.tls else [f"listener {self.port} {self.host}", "allow_anonymous true"]
        return "\n".join([
            # As root, mosquitto 2 switches to user "mosquitto", who cannot write our 0700 temp
            # folder; naming ourselves keeps it as is (the option is ignored for non-root).
            f"user {_current_user()}",
            *plain_listener,
            "persistence true",
            f"persistence_location {self.dir}/",  # mosquitto joins it with the file name as is
            "persistence_file mosquitto.db",
            f"log_dest file {self.dir / 'mosquitto.log'}",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            # Agents keep publishing while the collector is down; its persistent session must
            # hold hours of windows instead of dropping them at the default 1000.
            "max_queued_messages 1000000",
            "max_inflight_messages 0",  # 0: no limit; throughput over strict in-order delivery
            f"max_packet_size {MQTT_MAX_PACKET_BYTES}",
            "set_tcp_nodelay true",
            *([self.extra_conf] if self.extra_conf else []),
            "",
        ])


class InfluxDB(_Service):
    """InfluxDB 1.6 plus the nginx front that gives it the v2 write endpoint.

    `url` is the nginx front (what the collector gets as --influx-url, any token works);
    `direct_url` is influxd itself. Data and logs live in `workdir/influxdb/`.
    """

    def __init__(self, workdir: str | os.PathLike[str]):
        self.dir = Path(workdir).resolve() / "influxdb"
        self.host = HOST
        self.http_port = free_port()
        self.rpc_port = free_port()  # influxd's backup/restore service; must not clash either
        self.nginx_port = free_port()
        self.influxd_conf = self.dir / "influxdb.conf"
        self.nginx_conf = self.dir / "nginx.conf"
        influxd = [_require_binary("influxd"), "-config", str(self.influxd_conf)]
        nginx = [
            _require_binary("nginx"), "-c", str(self.nginx_conf), "-p", str(self.dir),
            "-e", str(self.dir / "nginx.log"),  # before the conf is read: no /var/log needed
        ]
        self._daemons = [
            _Daemon("influxd", influxd, self.dir / "influxd.log", lambda: _pings(self.direct_url)),
            _Daemon("nginx", nginx, self.dir / "nginx.log", lambda: _pings(self.url)),
        ]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.nginx_port}"

    @property
    def direct_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def start(self) -> Self:
        for sub in ("meta", "data", "wal", "nginx-tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.influxd_conf.write_text(self._influxd_config(), encoding="utf-8")
        self.nginx_conf.write_text(self._nginx_config(), encoding="utf-8")
        return super().start()

    def _influxd_config(self) -> str:
        d = self.dir
        return f"""\
reporting-disabled = true
bind-address = "{self.host}:{self.rpc_port}"

[meta]
  dir = "{d / 'meta'}"

[data]
  dir = "{d / 'data'}"
  wal-dir = "{d / 'wal'}"
  query-log-enabled = false
  # One tag value per node, GPU and workload: a fleet passes the default 100000 values per tag
  # key, and InfluxDB then rejects the whole write ("partial write: max-values-per-tag").
  max-values-per-tag = 0
  max-series-per-database = 0

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "{self.host}:{self.http_port}"
  auth-enabled = false
  log-enabled = false
  suppress-write-log = true

[continuous_queries]
  enabled = true
  log-enabled = false

[logging]
  suppress-logo = true
"""

    def _nginx_config(self) -> str:
        tmp = self.dir / "nginx-tmp"
        # As root, nginx workers would run as "nobody" and could not use our temp folders.
        user = "user root;\n" if os.geteuid() == 0 else ""
        # proxy_set_header in a location replaces (not extends) the outer ones, so each
        # location repeats the keep-alive "Connection" reset.
        return f"""\
daemon off;
master_process on;
worker_processes 1;
{user}pid {self.dir / 'nginx.pid'};
error_log {self.dir / 'nginx.log'} warn;

events {{
    worker_connections 512;
}}

http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    # Collector batches run to several MB; stream them through instead of buffering to disk.
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_http_version 1.1;
    proxy_read_timeout 60s;

    # v2 precision names -> v1 ones; the v2 default is ns.
    map $arg_precision $v1_precision {{
        default n;
        ns n;
        us u;
        ms ms;
        s s;
    }}

    upstream influxd {{
        server {self.host}:{self.http_port};
        keepalive 16;
    }}

    server {{
        listen {self.host}:{self.nginx_port};

        location = /api/v2/write {{
            proxy_set_header Connection "";
            proxy_set_header Authorization "";  # "Token x": 1.x would try to check it
            proxy_pass http://influxd/write?db=$arg_bucket&precision=$v1_precision;
        }}

        location / {{
            proxy_set_header Connection "";
            proxy_pass http://influxd;
        }}
    }}
}}
"""

    def query(
        self, influxql: str, db: str | None = None, epoch: str | None = "ns"
    ) -> list[dict[str, Any]]:
        """InfluxDB's parsed `results` list; raises InfluxQueryError on an InfluxQL error.

        Goes to influxd directly (POST, as 1.x wants for CREATE/DROP). `epoch="ns"` makes `time`
        an integer in ns; None gives RFC 3339 strings.
        """
        form = {"q": influxql}
        if db is not None:
            form["db"] = db
        if epoch is not None:
            form["epoch"] = epoch
        body = urllib.parse.urlencode(form).encode()
        status, raw = _http("POST", self.direct_url + "/query", body)
        answer = _json_or_text(raw)
        error = answer_error(answer)
        if status != 200 or error is not None:
            raise InfluxQueryError(f"{influxql!r} -> HTTP {status}: {error or answer}")
        return answer.get("results", [])

    def rows(
        self, influxql: str, db: str | None = None, epoch: str | None = "ns"
    ) -> list[dict[str, Any]]:
        """Every row of every series as one dict: columns (incl. `time`) plus GROUP BY tags."""
        return rows_of(self.query(influxql, db, epoch))

    def create_database(self, name: str) -> None:
        self.query(f"CREATE DATABASE {ident(name)}")

    def drop_database(self, name: str) -> None:
        self.query(f"DROP DATABASE {ident(name)}")


def _json_or_text(raw: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {"error": raw.decode("utf-8", "replace").strip()}
    return parsed if isinstance(parsed, dict) else {"error": repr(parsed)}


def collector_argv(
    broker_url: str,
    influx_url: str,
    bucket: str,
    client_id: str,
    *,
    group: str = "gpufleet",
    tenants_file: str | os.PathLike[str] | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """`gpufleet collector` as an operator runs it, against these local services: the command
    line that tests and benchmarks start (GPUFLEET_INFLUX_TOKEN goes in its environment)."""
    argv = [
        sys.executable, "-m", "gpufleet.cli", "collector", "--broker", broker_url, "--influx-url", influx_url,
        "--bucket", bucket, "--group", group, "--client-id", client_id,
    ]
    if tenants_file is not None:
        argv += ["--tenants-file", str(tenants_file)]
    return [*argv, *extra]
