"""DICOM over TLS with real peers: dcmtk echoscu/storescu (+tls) in, a TLS Orthanc out.

The listener tests run on both receive paths (``[node] receiver``). Certificates
come from the openssl command (tests/tlscerts.py): a hospital CA,
the node's certificate for 127.0.0.1, client certificates CN=CT1 and CN=OTHER,
and a rogue CA that issued another CN=CT1.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.dicomgen import write_ct_series, write_lesion_ct
from tests.packages import threshold_segmenter
from tests.peers import Orthanc, acknowledged, echoscu, free_port, storescu
from tests.receivers import both_receivers  # noqa: F401  (the listener tests run on both)
from tests.tlscerts import Pki, make_pki

pytestmark = [pytest.mark.network, pytest.mark.tools("openssl")]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls(pki: Pki, pair=None, ca: Path | None = None) -> list[str]:
    """dcmtk options: a client certificate (or anonymous TLS) and the CA to trust."""
    who = ["+tls", str(pair.key), str(pair.cert)] if pair else ["+tla"]
    return [*who, "+cf", str(ca or pki.ca)]


def _node_tls(pki: Pki, **extra: object) -> dict[str, object]:
    return {
        "certificate": str(pki.server.cert),
        "private_key": str(pki.server.key),
        "ca_bundle": str(pki.ca),
        **extra,
    }


def _tls_config(pki: Pki, **extra: object) -> str:
    lines = [f"{k} = {v!r}".replace("'", '"').replace("True", "true").replace("False", "false")
             for k, v in _node_tls(pki, **extra).items()]  # fmt: skip
    return "\n[node.tls]\n" + "\n".join(lines) + "\n"


def test_tls_only_port_stores_and_refuses_plain_dicom(node_factory, pki: Pki, tmp_path) -> None:
    node, cfg = node_factory(_tls_config(pki))
    port = cfg.node.port
    assert echoscu(port, extra=_tls(pki, pki.ct1)).returncode == 0
    files = write_ct_series(tmp_path / "ct", count=3)
    sent = storescu(port, files, extra=_tls(pki, pki.ct1))
    assert sent.returncode == 0 and set(acknowledged(sent.stdout).values()) == {"Success"}
    plain = echoscu(port)
    assert plain.returncode != 0
    assert node.terminate() == 0
    assert "TLS handshake with 127.0.0.1 failed" in node.output()
    assert "(TLS only)" in node.output()


def test_plain_and_tls_ports_side_by_side(node_factory, pki: Pki) -> None:
    tls_port = free_port()
    node, cfg = node_factory(_tls_config(pki, port=tls_port))
    assert echoscu(cfg.node.port).returncode == 0
    assert echoscu(tls_port, extra=_tls(pki, pki.ct1)).returncode == 0
    assert echoscu(tls_port).returncode != 0  # plain DICOM to the TLS port
    assert node.terminate() == 0
    assert f"TLS on {tls_port}" in node.output()


def test_client_certificates_are_checked(node_factory, pki: Pki) -> None:
    node, cfg = node_factory(_tls_config(pki, require_client_certificate=True))
    port = cfg.node.port
    assert echoscu(port, extra=_tls(pki, pki.ct1)).returncode == 0
    assert echoscu(port, extra=_tls(pki)).returncode != 0  # no client certificate
    assert echoscu(port, extra=_tls(pki, pki.rogue)).returncode != 0  # another CA's CN=CT1
    assert node.terminate() == 0
    log = node.output()
    assert "TLS handshake with 127.0.0.1 failed: PEER_DID_NOT_RETURN_A_CERTIFICATE" in log
    assert "TLS handshake with 127.0.0.1 failed: CERTIFICATE_VERIFY_FAILED" in log


def test_peer_pinned_to_its_certificate_subject(node_factory, pki: Pki) -> None:
    peers = '\n[[peers]]\nae_title = "CT1"\ntls_subject = "CN=CT1,O=Test Hospital"\n'
    node, cfg = node_factory(_tls_config(pki) + peers)
    port = cfg.node.port
    assert echoscu(port, aet="CT1", extra=_tls(pki, pki.ct1)).returncode == 0
    wrong = echoscu(port, aet="CT1", extra=_tls(pki, pki.other))
    assert "Calling AE Title Not Recognized" in wrong.stdout + wrong.stderr
    assert node.terminate() == 0
    assert (
        "calling AE 'CT1' from 127.0.0.1 is not the client certificate it is pinned to "
        "(CN=OTHER,O=Test Hospital)"
    ) in node.output()


def _client_hello() -> bytes:
    """The first flight of a TLS client (what a caller sends before it stalls)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def test_stalled_and_garbage_handshakes_do_not_disturb_others(node_factory, pki: Pki) -> None:
    node, cfg = node_factory(_tls_config(pki))
    port = cfg.node.port
    stop = threading.Event()
    opened: list[socket.socket] = []

    def bad(kind: str) -> None:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        opened.append(s)
        if kind == "garbage":
            s.sendall(os.urandom(300))
        elif kind == "hello":  # a real ClientHello, then nothing: the handshake stops half-way
            s.sendall(_client_hello())
        stop.wait(10)  # hold the connection: silent, or after what it sent

    kinds = ("silent", "garbage", "hello") * 3
    threads = [threading.Thread(target=bad, args=(k,)) for k in kinds]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        start = time.monotonic()
        ok = echoscu(port, extra=_tls(pki, pki.ct1))
        took = time.monotonic() - start
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        for s in opened:
            s.close()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert took < 1.5, f"a good caller waited {took:.1f} s behind stalled handshakes"
    assert node.terminate() == 0


def test_results_delivered_over_tls_to_orthanc(node_factory, pki: Pki, tmp_path: Path) -> None:
    orthanc_tls = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(pki.server.cert),
        "DicomTlsPrivateKey": str(pki.server.key),
        "DicomTlsTrustedCertificates": str(pki.ca),
        "DicomTlsRemoteCertificateRequired": True,
    }
    pacs = Orthanc(
        tmp_path / "orthanc",
        dicom_port=free_port(),
        http_port=free_port(),
        extra=orthanc_tls,
        echo_args=_tls(pki, pki.ct1),
    )
    pacs.start()
    try:
        package = threshold_segmenter(tmp_path / "pkg", threshold_hu=120)
        destination = pacs.toml_table(
            "destinations",
            tls=True,
            tls_ca_bundle=str(pki.ca),
            tls_certificate=str(pki.ct1.cert),
            tls_private_key=str(pki.ct1.key),
        )
        text = f"""
{destination}
[[pipelines]]
name = "lesions"
models = ["{package}"]
destinations = ["pacs"]
"""
        _node, cfg = node_factory(
            text,
            pipelines="",
            inference={"workers": 1, "poll_interval_s": 0.1},
            delivery={"check_interval_s": 0.2, "retry_wait_s": 0.5, "retry_backoff": 1.0},
        )
        files, _ = write_lesion_ct(tmp_path / "ct")
        study = str(dcmread(files[0]).StudyInstanceUID)
        assert storescu(cfg.node.port, files).returncode == 0
        deadline = time.monotonic() + 120
        found: list[dict[str, str]] = []
        while time.monotonic() < deadline and len(found) < 2:
            studies = pacs.get("/studies")
            found = []
            for s in studies:
                for series in pacs.get(f"/studies/{s}/series"):
                    found.append(series["MainDicomTags"])
            time.sleep(0.5)
        assert {f.get("Modality") for f in found} >= {"SR", "SEG"}, found
        assert pacs.get(f"/studies/{studies[0]}")["MainDicomTags"]["StudyInstanceUID"] == study
    finally:
        pacs.stop()


def test_a_busy_tls_port_stops_serve_naming_it(node_factory, pki: Pki) -> None:
    import subprocess
    import sys

    tls_port = free_port()
    node, _cfg = node_factory(_tls_config(pki, port=tls_port), start=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", tls_port))
        taken.listen(1)
        run = subprocess.run(
            [sys.executable, "-m", "node", "serve", "--config", str(node.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 1, run.stderr
    assert f"cannot listen on 127.0.0.1:{tls_port}: address already in use" in run.stderr
