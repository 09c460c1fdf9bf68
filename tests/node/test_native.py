"""The dcmtk receive path's own edges: a node without the compiled module says how to get it.

Everything the listener does is tested on both receive paths: by the modules
that import ``tests.receivers.both_receivers`` (test_network, test_junk,
test_crash, test_audit, test_commitment, test_prefetch_e2e, test_tls), and by test_access
and the storage commitment test of test_results_delivery, parametrized over
``RECEIVERS``.
"""

from __future__ import annotations

import sys

import pytest

from core.config_file import load_config
from node.native_listener import NativeUnavailable, native_module
from node.server import start_listener
from tests.peers import free_port


def test_the_module_is_built_here() -> None:
    """scripts/setup.sh builds it; CI would otherwise test only one receive path."""
    assert hasattr(native_module(), "serve_connection")


def test_without_the_module_the_listener_names_the_fix(
    write_config, sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    import node.native

    native_module()  # loaded, then made unimportable
    monkeypatch.delattr(node.native, "_dcmnet")
    monkeypatch.setitem(sys.modules, "node.native._dcmnet", None)
    cfg = load_config(
        write_config(
            node={"port": free_port(), "receiver": "dcmtk"},
            storage={"data_dir": "data", "min_free_mb": 0},
        )
    )
    with pytest.raises(NativeUnavailable, match=r"receiver = \"dcmtk\" needs node/native/_dcmnet"):
        start_listener(cfg, sessions, share_port=False)
    with pytest.raises(NativeUnavailable, match=r"run scripts/setup\.sh"):
        native_module()


def test_check_config_loads_the_module(write_config) -> None:
    """What an admin runs after switching the receiver (the systemd unit runs it too)."""
    import subprocess

    path = write_config(node={"receiver": "dcmtk"}, storage={"data_dir": "data"})
    run = [sys.executable, "-m", "node", "check-config", "--config", str(path)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert '[node] receiver = "dcmtk": node/native/_dcmnet loads' in done.stdout


@pytest.mark.tools("openssl")
def test_check_config_loads_the_tls_material_into_dcmtls(write_config, tmp_path) -> None:
    import subprocess

    from tests.tlscerts import make_pki

    pki = make_pki(tmp_path / "pki")
    tls = f"[node.tls]\ncertificate = '{pki.server.cert}'\nprivate_key = '{pki.server.key}'\n"
    path = write_config(tls, node={"receiver": "dcmtk"}, storage={"data_dir": "data"})
    run = [sys.executable, "-m", "node", "check-config", "--config", str(path)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "[node.tls]: dcmtls takes the certificate, key and CA bundle" in done.stdout


@pytest.mark.tools("openssl")
@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("private_key", r"private_key: .*missing\.pem is not a usable PEM key"),
        ("certificate", r"certificate: .*missing\.pem is not a usable PEM certificate"),
        ("ca_bundle", r"ca_bundle: .*missing\.pem holds no usable CA certificate"),
        ("pair", r"certificate/private_key: .* do not make a usable pair"),
    ],
)
def test_dcmtls_refuses_unusable_material_naming_the_key(tmp_path, broken, message) -> None:
    """The C++ side's own checks (node.tls checks the same files first, in Python)."""
    from node.tls import BCP195_CIPHERS
    from tests.tlscerts import make_pki

    pki = make_pki(tmp_path / "pki")
    files = {"certificate": pki.server.cert, "private_key": pki.server.key, "ca_bundle": pki.ca}
    if broken == "pair":
        files["private_key"] = pki.ct1.key
    else:
        files[broken] = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match=message):
        native_module().configure_tls(
            str(files["certificate"]),
            str(files["private_key"]),
            str(files["ca_bundle"]),
            False,
            BCP195_CIPHERS,
        )
    good = (str(pki.server.cert), str(pki.server.key), str(pki.ca), False, BCP195_CIPHERS)
    assert native_module().configure_tls(*good) is not None
