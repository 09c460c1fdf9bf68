"""Test certificates made with the openssl command: a CA, the node's, clients', and a rogue CA."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pki", "make_pki"]


@dataclass(frozen=True, slots=True)
class Pair:
    key: Path
    cert: Path


@dataclass(frozen=True, slots=True)
class Pki:
    ca: Path  # the hospital's CA certificate
    server: Pair  # 127.0.0.1 / localhost, signed by the CA
    ct1: Pair  # client "CN=CT1,O=Test Hospital", signed by the CA
    other: Pair  # client "CN=OTHER,O=Test Hospital", signed by the CA
    rogue: Pair  # client "CN=CT1,O=Test Hospital", signed by another CA
    rogue_ca: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> Pair:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
        "-days", "2", "-subj", f"/O=Test Hospital/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return Pair(key, cert)


def _leaf(folder: Path, name: str, subject: str, ca: Pair, ext: str) -> Pair:
    key, csr, cert = (folder / f"{name}.{x}" for x in ("key", "csr", "crt"))
    extfile = folder / f"{name}.ext"
    extfile.write_text(ext)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", subject)  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extfile),
    )  # fmt: skip
    return Pair(key, cert)


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca, rogue_ca = _ca(folder, "ca"), _ca(folder, "rogue-ca")
    server_ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    client_ext = "extendedKeyUsage=clientAuth\n"
    return Pki(
        ca=ca.cert,
        server=_leaf(folder, "node", "/O=Test Hospital/CN=ainode", ca, server_ext),
        ct1=_leaf(folder, "ct1", "/O=Test Hospital/CN=CT1", ca, client_ext),
        other=_leaf(folder, "other", "/O=Test Hospital/CN=OTHER", ca, client_ext),
        rogue=_leaf(folder, "rogue", "/O=Test Hospital/CN=CT1", rogue_ca, client_ext),
        rogue_ca=rogue_ca.cert,
    )
