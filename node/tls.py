"""DICOM over TLS: the listener's and the sender's contexts, and who the peer proved to be.

PS3.15 B.1 (and its BCP 195 profile): TLS 1.2 or newer; with TLS 1.2 only
forward-secret AEAD suites (ECDHE/DHE with AES-GCM or ChaCha20-Poly1305);
TLS 1.3's suites are all of that kind. Certificates are verified against the
configured CA bundle; the node's own certificate and key are loaded here, so
a key that does not belong to its certificate is an error at start-up (and in
``ainode check-config``), naming the key.
"""

from __future__ import annotations

import ssl
from typing import Any

from core.config import ClientTls, TlsConfig

__all__ = ["BCP195_CIPHERS", "TlsError", "client_context", "peer_subject", "server_context"]

#: TLS 1.2 suites allowed (TLS 1.3 suites are configured by OpenSSL and all qualify).
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!SHA1"


class TlsError(ValueError):
    """A TLS setting cannot be used; the message names the config key."""


def _base(protocol: ssl._SSLMethod) -> ssl.SSLContext:
    """A context that trusts nothing yet (not even the system's CAs)."""
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: Any, key: Any, where: str) -> None:
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:
        raise TlsError(
            f"{where} certificate/private_key: {cert} and {key} do not make a usable pair "
            f"({exc.reason or exc})"
        ) from None


def _load_ca(ctx: ssl.SSLContext, bundle: Any, key: str) -> None:
    try:
        ctx.load_verify_locations(cafile=str(bundle))
    except ssl.SSLError as exc:
        raise TlsError(f"{key}: {bundle} holds no usable CA certificate ({exc.reason})") from None


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """The listener's context: its certificate; client certificates checked against the CAs.

    Only the configured CA bundle is trusted for client certificates, never
    the system's list of public CAs.
    """
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(ctx, tls.certificate, tls.private_key, "[node.tls]")
    if tls.ca_bundle is not None:
        _load_ca(ctx, tls.ca_bundle, "[node.tls] ca_bundle")
        # A client certificate is verified when offered; required if so configured.
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(tls: ClientTls, name: str) -> ssl.SSLContext:
    """The sender's context for destination ``name``: the peer must prove its identity."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)  # verifies the peer and its name
    where = f"[[destinations]] {name!r}"
    if tls.ca_bundle is not None:
        _load_ca(ctx, tls.ca_bundle, f"{where} tls_ca_bundle")
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.certificate is not None and tls.private_key is not None:
        _load_chain(ctx, tls.certificate, tls.private_key, f"{where} tls_")
    return ctx


_SHORT = {
    "commonName": "CN",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "emailAddress": "emailAddress",
    "domainComponent": "DC",
}


def peer_subject(sock: Any) -> str | None:
    """A verified client certificate's subject in RFC 4514 order ("CN=...,O=..."), or None.

    The order and names are those of ``openssl x509 -noout -subject -nameopt
    RFC2253``, so an admin can copy a peer's ``tls_subject`` from that command.
    """
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    cert = getpeercert()
    if not cert:
        return None
    parts = []
    for rdn in reversed(cert.get("subject", ())):
        parts.append("+".join(f"{_SHORT.get(k, k)}={_escape(v)}" for k, v in rdn))
    return ",".join(parts)


def _escape(value: str) -> str:
    out = "".join(f"\\{c}" if c in ',+"\\<>;=' else c for c in value)
    if out.startswith((" ", "#")):
        out = "\\" + out
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    return out
