from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.config import CompletionLevel, DuplicatePolicy, Receiver
from core.config_file import ConfigError, load_config
from inference.spec import verify_package
from node.__main__ import main

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_is_valid() -> None:
    cfg = load_config(REPO / "config.toml")
    assert cfg.node.ae_title == "AINODE"
    assert cfg.node.port == 11112
    assert cfg.storage.data_dir == REPO / "data"
    assert [p.name for p in cfg.pipelines] == ["ct-lesions", "ecg-rhythm"]
    for pipeline in cfg.pipelines:  # the shipped models exist and pass their hash check
        for folder in pipeline.models:
            verify_package(folder)


def test_defaults_and_relative_paths(write_config) -> None:
    (write_config().parent / "spool").mkdir()
    path = write_config(storage={"data_dir": "spool/here"})
    cfg = load_config(path)
    assert cfg.storage.data_dir == path.parent / "spool" / "here"
    assert cfg.storage.on_duplicate is DuplicatePolicy.KEEP
    assert cfg.completion.level is CompletionLevel.STUDY
    assert cfg.completion.quiet_period_s == 20
    assert cfg.node.max_associations >= 16
    assert cfg.peers == ()


def test_config_from_environment(write_config, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(node={"ae_title": "FROMENV"})
    monkeypatch.setenv("AINODE_CONFIG", str(path))
    assert load_config().node.ae_title == "FROMENV"


@pytest.mark.parametrize(
    ("tables", "text", "message"),
    [
        ({"node": {"ae_title": "A" * 17}}, "", "[node] ae_title: must be at most 16 characters"),
        ({"node": {"ae_title": "BAD\\AE"}}, "", "[node] ae_title: must not contain a backslash"),
        ({"node": {"ae_title": "BAD\tAE"}}, "", "[node] ae_title: must not contain control"),
        ({"node": {"ae_title": "   "}}, "", "[node] ae_title: must not be empty"),
        ({"node": {"port": 70000}}, "", "[node] port: must be at most 65535"),
        ({"node": {"port": 0}}, "", "[node] port: must be at least 1"),
        ({"node": {"port": "11112"}}, "", "[node] port: must be an integer"),
        ({"node": {"bind_address": "localhost"}}, "", "[node] bind_address: must be an IPv4"),
        ({"node": {"colour": "blue"}}, "", "[node]: unknown key(s): colour"),
        ({"storage": {"on_duplicate": "merge"}}, "", "[storage] on_duplicate: must be one of"),
        (
            {"storage": {"data_dir": "no/such/parent/data"}},
            "",
            "[storage] data_dir: the folder that holds it must exist",
        ),
        ({"completion": {"level": "patient"}}, "", "[completion] level: must be one of"),
        (
            {"completion": {"quiet_period_s": 0}},
            "",
            "[completion] quiet_period_s: must be at least",
        ),
        ({"queue": {"max_attempts": 0}}, "", "[queue] max_attempts: must be at least 1"),
        ({}, "[[peers]]\nhost = '10.0.0.1'\n", "[[peers]] #1 ae_title: is required"),
        (
            {},
            "[[peers]]\nae_title = 'CT1'\nhost = 'ct.example'\n",
            "[[peers]] #1 host: must be an IP address or network",
        ),
        (
            {},
            "[[pipelines]]\nname = 'a'\n[[pipelines]]\nname = 'a'\n",
            "[[pipelines]] #2 name: must be unique",
        ),
        ({}, "surprise = 1\n", "top level: unknown key(s): surprise"),
    ],
)
def test_errors_name_the_key_and_the_rule(write_config, tables, text, message) -> None:
    path = write_config(text, **tables)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


def test_peer_matching(write_config) -> None:
    path = write_config(
        "[[peers]]\nae_title = 'CT1'\nhost = '10.1.0.0/16'\n[[peers]]\nae_title = 'ANY'\n"
    )
    ct1, anywhere = load_config(path).peers
    assert ct1.allows("CT1", "10.1.2.3")
    assert not ct1.allows("CT1", "10.2.0.1")
    assert not ct1.allows("CT2", "10.1.2.3")
    assert anywhere.allows("ANY ", "192.0.2.1")


def test_cli_check_config(write_config, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_config()
    assert main(["check-config", "--config", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = write_config(node={"ae_title": "WAY_TOO_LONG_AE_TITLE"})
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "[node] ae_title: must be at most 16 characters (got 21)" in err


def test_cli_serve_refuses_bad_config(write_config, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_config(node={"port": -1})
    assert main(["serve", "--config", str(bad)]) == 2
    assert "[node] port: must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[pipelines]]\nname = "p"\ndestinations = ["pacs"]\n',
            "[[pipelines]] 'p' destinations: 'pacs' is not a [[destinations]] name",
        ),
        (
            '[[destinations]]\nname = "pacs"\nhost = "10.0.0.5"\n',
            "[[destinations]] #1 ae_title, host and port: are required",
        ),
        (
            '[[destinations]]\nname = "pacs"\nae_title = "A"\nhost = "h"\nport = 70000\n',
            "[[destinations]] #1 port: must be at most 65535 (got 70000)",
        ),
        (
            '[[pipelines]]\nname = "p"\n'
            '[pipelines.recommendations.malignant]\ncode = ["1", "SCT"]\n',
            "[[pipelines]] #1 recommendations.malignant code: must be [value, scheme, meaning]",
        ),
        ("[delivery]\nretry_backoff = 0.5\n", "[delivery] retry_backoff: must be at least 1"),
        (
            '[[destinations]]\nname = "pacs"\nae_title = "A"\nhost = "h"\nheat_map = "png"\n',
            '[[destinations]] #1 heat_map: must be "float", "deflated" or "off" (got \'png\')',
        ),
        (
            '[[sources]]\nname = "pacs"\nae_title = "P"\nhost = "h"\nretrieve = "ftp"\n',
            '[[sources]] #1 retrieve: must be "move" or "get" (got \'ftp\')',
        ),
        (
            '[[pipelines]]\nname = "p"\npriors_from = ["vna"]\n',
            "[[pipelines]] 'p' priors_from: 'vna' is not a [[sources]] name",
        ),
        (
            '[[destinations]]\nname = "pacs"\nae_title = "A"\nhost = "h"\n'
            "commitment_timeout_s = 60\n",
            "[[destinations]] #1 commitment_timeout_s: only with storage_commitment = true",
        ),
        (
            '[[destinations]]\nname = "pacs"\nae_title = "A"\nhost = "h"\n'
            'storage_commitment = "yes"\n',
            "[[destinations]] #1 storage_commitment: must be true or false",
        ),
        (
            '[[pipelines]]\nname = "p"\n[pipelines.fleischner]\nrisk = "low"\n',
            "[[pipelines]] #1 fleischner labels: is required",
        ),
        (
            '[[pipelines]]\nname = "p"\n[pipelines.fleischner]\nlabels = ["n"]\nrisk = "mid"\n',
            "[[pipelines]] #1 fleischner risk: must be low, high or unknown (got 'mid')",
        ),
        (
            '[[pipelines]]\nname = "p"\nreport_declined = "yes"\n',
            "[[pipelines]] #1 report_declined: must be",
        ),
    ],
)
def test_result_settings_are_validated(write_config, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(text))
    assert message in str(err.value)


def test_destinations_and_result_settings(write_config) -> None:
    cfg = load_config(
        write_config(
            """
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "10.0.0.5"
port = 104

[[pipelines]]
name = "p"
destinations = ["pacs"]
series_number = 5000
series_description = "AI chest"
[pipelines.recommendations.malignant]
code = ["103693007", "SCT", "Diagnostic procedure"]
text = "Consider biopsy"
""",
            delivery={"max_attempts": 5},
        )
    )
    (p,) = cfg.pipelines
    assert p.destinations == ("pacs",) and p.series_number == 5000
    assert p.recommendations[0].finding == "malignant"
    assert cfg.destination("pacs").port == 104 and cfg.delivery.max_attempts == 5
    assert not cfg.destination("pacs").storage_commitment


def test_readme_documents_every_key_the_parser_reads() -> None:
    """A key added to the parser without a row in the README's reference fails here."""
    import re

    root = Path(__file__).resolve().parents[2]
    source = "".join(
        (root / "core" / name).read_text()
        for name in (
            "config_file.py",
            "config_pipelines.py",
            "config_network.py",
            "config_export.py",
        )
    )
    keys = set(re.findall(r'(?:\(|short_text\(table,|_file\(table,)\s*"([a-z_]+)"', source))
    keys -= {"rb"}  # not a key: the mode the file is opened in
    readme = (root / "README.md").read_text()
    section = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"[a-z_]+", " ".join(re.findall(r"`([^`]+)`", section))))
    assert len(keys) > 40, keys
    assert sorted(keys - documented) == []


def test_receiver_is_one_of_the_two(write_config) -> None:
    assert load_config(write_config()).node.receiver is Receiver.DCMTK
    chosen = load_config(write_config(node={"receiver": "pynetdicom"})).node.receiver
    assert chosen is Receiver.PYNETDICOM
    with pytest.raises(
        ConfigError, match=r'\[node\] receiver: must be one of "pynetdicom" or "dcmtk"'
    ):
        load_config(write_config(node={"receiver": "orthanc"}))


def test_per_host_share_defaults_to_half_and_is_bounded(write_config) -> None:
    assert load_config(write_config(node={"max_associations": 10})).node.per_host_limit == 5
    assert load_config(write_config(node={"max_associations": 1})).node.per_host_limit == 1
    with pytest.raises(ConfigError, match="max_associations_per_host: must be at most"):
        load_config(write_config(node={"max_associations": 4, "max_associations_per_host": 5}))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[node.tls]\nprivate_key = 'k.pem'\n", "[node.tls] certificate: is required"),
        (
            "[node.tls]\ncertificate = 'nope.pem'\nprivate_key = 'k.pem'\n",
            "[node.tls] certificate: ",
        ),
        (
            "[node.tls]\ncertificate = 'c.pem'\nprivate_key = 'k.pem'\n"
            "require_client_certificate = true\n",
            "[node.tls] ca_bundle: is required with require_client_certificate = true",
        ),
        (
            "[node]\nport = 11112\n[node.tls]\ncertificate = 'c.pem'\nprivate_key = 'k.pem'\n"
            "port = 11112\n",
            "[node.tls] port: must differ from [node] port (11112)",
        ),
        (
            "[[destinations]]\nname = 'p'\nae_title = 'P'\nhost = 'h'\ntls_ca_bundle = 'c.pem'\n",
            "[[destinations]] #1 tls_ca_bundle: only with tls = true",
        ),
        ("[[peers]]\nae_title = 'A'\ntls_subject = ''\n", "[[peers]] #1 tls_subject: must not"),
    ],
)
def test_tls_settings_are_checked(write_config, tmp_path: Path, text: str, message: str) -> None:
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("not checked here: the TLS context loads it\n")
    with pytest.raises(ConfigError) as info:
        load_config(write_config(text))
    assert message in str(info.value)


@pytest.mark.tools("openssl")
def test_check_config_loads_the_tls_pair(write_config, tmp_path: Path) -> None:
    """A key that is not the certificate's is found by check-config, naming the keys."""
    import subprocess
    import sys

    from tests.tlscerts import make_pki

    pki = make_pki(tmp_path / "pki")
    good = write_config(
        f"[node.tls]\ncertificate = '{pki.server.cert}'\nprivate_key = '{pki.server.key}'\n"
    )
    run = [sys.executable, "-m", "node", "check-config", "--config", str(good)]
    ok = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "[node.tls]: certificate and key load" in ok.stdout
    good.write_text(good.read_text().replace(str(pki.server.key), str(pki.ct1.key)))
    bad = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "[node.tls] certificate/private_key:" in bad.stderr
    assert "do not make a usable pair" in bad.stderr


@pytest.mark.parametrize(
    ("syslog", "message"),
    [
        ("syslog://h:1", 'must look like "udp://host:514"'),
        ("udp://", 'must look like "udp://host:514"'),
        ("tcp://h:notaport", 'must look like "udp://host:514"'),
    ],
)
def test_audit_syslog_target_is_checked(write_config, syslog: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(audit={"syslog": syslog}))


def test_audit_defaults(write_config, tmp_path: Path) -> None:
    cfg = load_config(write_config(audit={"syslog": "tcp+tls://siem.local"}))
    assert cfg.audit is not None and cfg.audit.syslog is not None
    assert cfg.audit.file == tmp_path / "data" / "audit" / "audit.log"
    assert (cfg.audit.syslog.transport, cfg.audit.syslog.port) == ("tcp+tls", 6514)
    assert cfg.audit.syslog.tls is not None


def test_web_settings_are_checked(write_config, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[web\] port: must differ from \[node\] port"):
        load_config(write_config(node={"port": 9000}, web={"port": 9000}))
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=r"\[web\] admin_token_file: .* is empty"):
        load_config(write_config(web={"admin_token_file": str(empty)}))
    with pytest.raises(ConfigError, match=r"\[web\] bind_address: must be an IPv4"):
        load_config(write_config(web={"bind_address": "localhost"}))


def test_export_secret_file_rules(write_config, tmp_path: Path) -> None:
    secret = tmp_path / "export-secret"
    secret.write_bytes(b"x" * 32)
    secret.chmod(0o600)
    cfg = load_config(write_config(export={"secret_file": str(secret)}))
    assert cfg.export.secret_file == secret and not cfg.export.allow_burned_in
    for mode, size, rule in (
        (0o644, 32, "must be readable by its owner only (chmod 600)"),
        (0o600, 8, "must hold at least 16 bytes (has 8)"),
    ):
        secret.write_bytes(b"x" * size)
        secret.chmod(mode)
        with pytest.raises(ConfigError, match=re.escape(f"[export] secret_file: {secret} {rule}")):
            load_config(write_config(export={"secret_file": str(secret)}))
    with pytest.raises(ConfigError, match=r"\[export\] secret_file: .* is not a file"):
        load_config(write_config(export={"secret_file": str(tmp_path / "none")}))
    with pytest.raises(ConfigError, match=r"\[export\]: unknown key\(s\): secret"):
        load_config(write_config(export={"secret": "abc"}))


def test_listening_ports_follow_the_tls_settings(write_config, tmp_path: Path) -> None:
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("not checked here\n")
    tls = "[node.tls]\ncertificate = 'c.pem'\nprivate_key = 'k.pem'\n"
    plain = load_config(write_config(node={"port": 104})).node
    assert plain.ports == ((104, False),)
    only = load_config(write_config(tls, node={"port": 104})).node
    assert only.ports == ((104, True),)
    beside = load_config(write_config(tls + "port = 2762\n", node={"port": 104})).node
    assert beside.ports == ((104, False), (2762, True))
