"""Real peers for network tests: the ainode process and dcmtk's command-line tools.

Every loop here is bounded in time; every process is stopped by the fixture that
started it.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread


def own_bin_last(path: str) -> str:
    """``path`` (a PATH) with this Python's own bin folder moved to its end. pynetdicom
    installs Python apps named like dcmtk's (storescp, storescu, echoscu, findscu, movescu,
    getscu) there: with the virtual environment activated they came first, and 38 network
    tests failed on ``storescp: error: argument port: invalid int value: '+B'``."""
    own = os.path.realpath(os.path.dirname(sys.executable))
    parts = path.split(os.pathsep)
    mine = [p for p in parts if p and os.path.realpath(p) == own]
    return os.pathsep.join([p for p in parts if p not in mine] + mine)


# Every peer started by the tests, with env or without, finds dcmtk's tools first.
os.environ["PATH"] = own_bin_last(os.environ.get("PATH", ""))
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now and never handed out before by this process: the kernel may give
    the same free port to two calls in a row (a node and its web page once got one)."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port left that this test run has not used")


def echoscu(
    port: int, *, aec: str = "AINODE", aet: str = "ECHOSCU", extra: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", aet, "-aec", aec, *extra, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=30,
    )


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    aec: str = "AINODE",
    aet: str = "STORESCU",
    extra: Sequence[str] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` in one association with dcmtk storescu; all output in ``stdout``."""
    return subprocess.run(
        [
            "storescu",
            "-v",
            "-aet",
            aet,
            "-aec",
            aec,
            *extra,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=DCMTK_ENV,
        timeout=timeout,
    )


_SENDING = re.compile(r"^I: Sending file: (.+)$")
_RESPONSE = re.compile(r"^I: Received Store Response(?: \((.+)\))?$")
_DEBUG_STATUS = re.compile(r"^D: DIMSE Status\s+: (0x[0-9a-f]{4})")


def acknowledged(storescu_output: str) -> dict[Path, str]:
    """Map each file storescu sent to the status it printed.

    With ``-v`` the status is storescu's text ("Success"); with ``-d`` it is the
    hex code ("0x0000", "0xc001"), read from the response dump.
    """
    result: dict[Path, str] = {}
    current: Path | None = None
    for line in storescu_output.splitlines():
        if m := _SENDING.match(line):
            current = Path(m.group(1))
        elif (m := _RESPONSE.match(line)) and current is not None:
            if m.group(1):
                result[current] = m.group(1)
                current = None
        elif (m := _DEBUG_STATUS.match(line)) and current is not None:
            result[current] = m.group(1)
            current = None
    return result


class NodeProcess:
    """``ainode serve`` in its own process group, on 127.0.0.1."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> NodeProcess:
        self._ready_mark = self.output().count(" listening on ") if self.log.exists() else 0
        self._log_handle = open(self.log, "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--config", str(self.config)],
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"ainode exited with {self.proc.returncode}:\n{self.output()}")
            # serve logs "listening on" once its listeners, workers and scheduler run
            # (whatever the port speaks: plain DICOM, TLS, or a peer list without us).
            if self.output().count(" listening on ") > self._ready_mark:
                return
            time.sleep(0.1)
        raise TimeoutError(f"ainode did not start within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait; return the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # where it waits: serve writes every thread's stack on SIGUSR1 (faulthandler)
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            raise AssertionError(
                f"ainode did not exit within {timeout} s of SIGTERM:\n{self.output()[-20000:]}"
            ) from None
        self._log_handle.close()
        return code

    def kill9(self) -> None:
        """kill -9 the whole node: main process and listener children at once."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._log_handle.close()

    def kill9_main_only(self) -> None:
        """kill -9 the main process alone, as a crash would: its children get no signal."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._log_handle.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(30)
            self._log_handle.close()


class StoreScp:
    """dcmtk ``storescp +B``: a reference receiver that writes datasets exactly as received."""

    def __init__(self, folder: Path, log: Path) -> None:
        """Start on a free port (``self.port``); a port taken between choosing it and
        storescp binding it (another test's connection) is replaced, up to 5 times."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "ab")  # closed in stop()
        for _attempt in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                ["storescp", "+B", "+xa", "-aet", "AINODE", "-od", str(folder), str(self.port)],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=DCMTK_ENV,
            )
            deadline = time.monotonic() + 30
            while echoscu(self.port).returncode != 0:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    break
                time.sleep(0.1)
            else:
                return
            if self.proc.poll() is None or "Address already in use" not in log.read_text():
                break
        self.stop()
        raise RuntimeError(f"storescp did not start (see {log})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self._log.close()


class Orthanc:
    """A real Orthanc (Debian package) on 127.0.0.1, as the PACS that receives results."""

    def __init__(
        self,
        folder: Path,
        *,
        dicom_port: int,
        http_port: int,
        aet: str = "ORTHANC",
        extra: dict[str, Any] | None = None,
        echo_args: Sequence[str] = (),
    ):
        self.echo_args = tuple(echo_args)  # e.g. dcmtk's TLS options when DicomTlsEnabled
        self.folder = folder
        self.dicom_port = dicom_port
        self.http_port = http_port
        self.aet = aet
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "orthanc.json"
        self.config.write_text(
            json.dumps(
                {
                    "Name": "ainode-tests",
                    "StorageDirectory": str(folder / "db"),
                    "IndexDirectory": str(folder / "db"),
                    "DicomAet": aet,
                    "DicomPort": dicom_port,
                    "HttpPort": http_port,
                    "HttpServerEnabled": True,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "DicomServerEnabled": True,
                    "DicomCheckCalledAet": True,
                    "Plugins": [],
                    "StorageCompression": False,
                    **(extra or {}),
                }
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def toml_table(self, table: str, name: str = "pacs", **keys: object) -> str:
        """This Orthanc as a ``[[destinations]]`` or ``[[sources]]`` table of config.toml
        (``keys``: more keys of the table, their values written as TOML)."""
        lines = [
            f"[[{table}]]",
            f'name = "{name}"',
            f'ae_title = "{self.aet}"',
            'host = "127.0.0.1"',
            f"port = {self.dicom_port}",
            *(f"{key} = {json.dumps(value)}" for key, value in keys.items()),
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 60) -> Orthanc:
        self._log = open(self.folder / "orthanc.log", "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            ["Orthanc", str(self.config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=DCMTK_ENV,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}")
            try:
                self.get("/system")
                if echoscu(self.dicom_port, aec=self.aet, extra=self.echo_args).returncode == 0:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError("Orthanc did not start")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return json.load(r)

    def post(self, path: str, body: object) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.load(r)

    def put(self, path: str, body: object) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def upload(self, files: Sequence[Path]) -> None:
        """Store files through the REST API (as if a modality had sent them to the PACS)."""
        for path in files:
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.http_port}/instances",
                data=path.read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
            with urllib.request.urlopen(request, timeout=30) as r:
                assert json.load(r)["Status"] in ("Success", "AlreadyStored")

    def find_instance(self, sop_instance_uid: str) -> dict[str, str] | None:
        """Where Orthanc holds an instance: its study UID and series modality, or None."""
        found = self.post(
            "/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}}
        )
        if not found:
            return None
        instance = self.get(f"/instances/{found[0]}")
        series = self.get(f"/series/{instance['ParentSeries']}")
        study = self.get(f"/studies/{series['ParentStudy']}")
        return {
            "study": study["MainDicomTags"]["StudyInstanceUID"],
            "modality": series["MainDicomTags"].get("Modality", ""),
            "copies": str(len(found)),
        }

    def read_instance(self, sop_instance_uid: str) -> Dataset:
        """The instance Orthanc holds with that SOP Instance UID, as stored (its file)."""
        found = self.post(
            "/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}}
        )
        assert found, f"Orthanc holds no instance {sop_instance_uid}"
        url = f"http://127.0.0.1:{self.http_port}/instances/{found[0]}/file"
        with urllib.request.urlopen(url, timeout=10) as r:
            return dcmread(io.BytesIO(r.read()))

    def new_instance_events(self) -> int:
        """How many times Orthanc stored a new instance (its change log)."""
        changes, since = 0, 0
        while True:
            page = self.get(f"/changes?since={since}&limit=1000")
            changes += sum(1 for c in page["Changes"] if c["ChangeType"] == "NewInstance")
            if page["Done"]:
                return changes
            since = page["Last"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
            self._log.close()


class HungPeer:
    """A TCP peer on 127.0.0.1 that accepts connections, reads, and never answers.

    What a hung PACS looks like from the outside: the association request is
    sent and nothing comes back. Stopped (every socket closed) by ``stop``.
    """

    def __init__(self) -> None:
        import threading

        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(8)
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._clients: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            client.settimeout(0.2)
            self._clients.append(client)
            self.connections += 1
            while not self._stop.is_set():  # read and drop, never answer
                try:
                    if not client.recv(65536):
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for client in self._clients:
            client.close()
        self._server.close()


class SyslogReceiver:
    """A syslog collector on 127.0.0.1: UDP datagrams, or TCP with octet counting (RFC 6587)."""

    def __init__(self, transport: str, port: int = 0) -> None:
        import threading

        self.transport = transport
        self.frames: list[str] = []
        self._stop = threading.Event()
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self._sock = socket.socket(socket.AF_INET, kind)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        if transport != "udp":
            self._sock.listen(4)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.transport == "udp":
                    data, _ = self._sock.recvfrom(65536)
                    self.frames.append(data.decode())
                    continue
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._read_stream(conn)

    def _read_stream(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        buffer = b""
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buffer += chunk
                while b" " in buffer:  # "LENGTH SP FRAME"
                    length, _, rest = buffer.partition(b" ")
                    if len(rest) < int(length):
                        break
                    self.frames.append(rest[: int(length)].decode())
                    buffer = rest[int(length) :]

    def wait_for(self, predicate, timeout: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.frames):
                return self.frames
            time.sleep(0.1)
        raise AssertionError(f"syslog: timed out; got {len(self.frames)} frame(s)")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium(url: str, user_data: Path, *, screenshot: Path | None = None) -> str:
    """The DOM of ``url`` as Debian's headless Chromium renders it (and a screenshot)."""
    args = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={user_data}"]
    if screenshot is not None:
        args += ["--window-size=1500,1000", f"--screenshot={screenshot}"]
    else:
        args += ["--dump-dom"]
    done = subprocess.run([*args, url], capture_output=True, text=True, timeout=120, env=DCMTK_ENV)
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout
