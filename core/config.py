"""The validated configuration as frozen records: what every layer reads.

``core.config_file`` builds a :class:`NodeConfig` from ``config.toml`` once at
start-up (every rule checked there); the rest of the code receives it and
never reads the file itself.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.config_remote import ClientTls, DestinationConfig, SourceConfig
from core.retry import RetryPolicy

__all__ = [
    "AuditConfig",
    "ClientTls",
    "CompletionConfig",
    "CompletionLevel",
    "DeliveryConfig",
    "DestinationConfig",
    "DuplicatePolicy",
    "ExportConfig",
    "InferenceConfig",
    "ListenerConfig",
    "LoggingConfig",
    "NodeConfig",
    "PeerConfig",
    "PipelineConfig",
    "QueueConfig",
    "Recommendation",
    "ResultsConfig",
    "RetentionConfig",
    "SeriesRule",
    "SourceConfig",
    "StorageConfig",
    "SyslogTarget",
    "TlsConfig",
    "WebConfig",
]


class DuplicatePolicy(enum.StrEnum):
    """What to do when a SOP Instance UID arrives that is already stored."""

    KEEP = "keep"
    REPLACE = "replace"


class CompletionLevel(enum.StrEnum):
    """Whether the quiet period closes a whole study or each series alone."""

    STUDY = "study"
    SERIES = "series"


class Receiver(enum.StrEnum):
    """``[node] receiver``: the library that speaks DICOM on the listening port."""

    PYNETDICOM = "pynetdicom"
    DCMTK = "dcmtk"  # dcmtk's libdcmnet through node/native (built by scripts/setup.sh)


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """``[node.tls]``: DICOM over TLS (PS3.15 B.1; TLS 1.2 or newer, BCP 195 ciphers)."""

    certificate: Path
    private_key: Path
    ca_bundle: Path | None = None  # trusted CAs for client certificates
    require_client_certificate: bool = False
    # A port of its own (e.g. 2762 beside 104); None: the main port speaks TLS only.
    port: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig:
    """``[node]``: the DICOM listener."""

    ae_title: str = "AINODE"
    bind_address: str = "127.0.0.1"
    port: int = 11112
    listener_processes: int = 1
    max_associations: int = 16
    # One caller's share of the slots; None: half of max_associations (at least 1).
    max_associations_per_host: int | None = None
    max_pdu_bytes: int = 4 * 1024 * 1024
    network_timeout_s: float = 60.0
    # How long a caller has, once connected, to send its A-ASSOCIATE-RQ: a
    # connection that sends junk, stalls or hangs up frees its slot by then.
    acse_timeout_s: float = 2.0
    dimse_timeout_s: float = 60.0
    shutdown_grace_s: float = 30.0
    tls: TlsConfig | None = None
    receiver: Receiver = Receiver.DCMTK

    @property
    def ports(self) -> tuple[tuple[int, bool], ...]:
        """The ports to listen on, each with whether it speaks TLS: the main port plain;
        with ``[node.tls]``, the main port TLS only, or a TLS port beside the plain one."""
        if self.tls is None:
            return ((self.port, False),)
        if self.tls.port is None:
            return ((self.port, True),)
        return ((self.port, False), (self.tls.port, True))

    @property
    def per_host_limit(self) -> int:
        """Concurrent associations one IP address may hold."""
        if self.max_associations_per_host is not None:
            return self.max_associations_per_host
        return max(1, self.max_associations // 2)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerConfig:
    """``[[peers]]``: one caller allowed to associate."""

    ae_title: str
    host: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    # Only over TLS, with a client certificate of exactly this subject (RFC 4514,
    # as `openssl x509 -noout -subject -nameopt RFC2253` prints it).
    tls_subject: str | None = None

    def allows(self, ae_title: str, address: str, subject: str | None = None) -> bool:
        """Whether a caller with this AE title, IP address and certificate subject matches."""
        if ae_title.strip() != self.ae_title:
            return False
        if self.tls_subject is not None and subject != self.tls_subject:
            return False
        if self.host is None:
            return True
        try:
            return ipaddress.ip_address(address) in self.host
        except ValueError:
            return False


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig:
    """``[storage]``: where instances and the index live."""

    data_dir: Path
    on_duplicate: DuplicatePolicy = DuplicatePolicy.KEEP
    min_free_mb: int = 1024

    @property
    def database_path(self) -> Path:
        return self.data_dir / "ainode.sqlite3"


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseConfig:
    """``[database]``: the index and queue; SQLite (embedded, default) or PostgreSQL.

    ``url`` never holds a password: it comes from ``password_file`` or the
    ``AINODE_DATABASE_PASSWORD`` environment variable when the engine is made.
    """

    url: str
    password_file: Path | None = None

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file the URL names; None for a database server."""
        return Path(self.url.split(":///", 1)[1]) if self.url.startswith("sqlite") else None


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionConfig:
    """``[completion]``: when a study (or series) counts as complete."""

    level: CompletionLevel = CompletionLevel.STUDY
    quiet_period_s: float = 20.0
    check_interval_s: float = 1.0


def _policy(table: QueueConfig | DeliveryConfig) -> RetryPolicy:
    """``[queue]`` and ``[delivery]`` name their retry keys alike."""
    return RetryPolicy(
        max_attempts=table.max_attempts,
        wait_s=table.retry_wait_s,
        backoff=table.retry_backoff,
        max_wait_s=table.retry_max_wait_s,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    """``[queue]``: leases and the retry policy of jobs."""

    lease_s: float = 300.0
    lease_check_interval_s: float = 5.0
    max_attempts: int = 3
    retry_wait_s: float = 30.0
    retry_backoff: float = 2.0
    retry_max_wait_s: float = 3600.0

    @property
    def retry(self) -> RetryPolicy:
        """The jobs' retry policy, as data (storage.queue applies it)."""
        return _policy(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesRule:
    """Which series of a completed study a pipeline takes (all given rules must hold)."""

    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    series_description: re.Pattern[str] | None = None
    sop_classes: tuple[str, ...] = ()
    min_instances: int = 1
    axial_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineConfig:
    """``[[pipelines]]``: one pipeline that completed studies are queued for."""

    name: str
    priority: int = 100
    match: SeriesRule = field(default_factory=SeriesRule)
    models: tuple[Path, ...] = ()
    shadow: bool = False
    destinations: tuple[str, ...] = ()
    series_number: int = 900
    series_description: str = ""
    recommendations: tuple[Recommendation, ...] = ()
    # Models decline series outside their validated input (inference.domain);
    # off only for benchmarks on synthetic noise, never for patients.
    domain_check: bool = True
    # A declined series gets an SR saying the AI looked and declined, and why.
    report_declined: bool = False
    # Lung-nodule follow-up by the Fleischner 2017 table (inference.fleischner).
    fleischner: FleischnerConfig | None = None
    # [[sources]] its progression models' priors are retrieved from (node.prefetch).
    priors_from: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class FleischnerConfig:
    """``[pipelines.fleischner]``: which segmentation labels are lung nodules; patient risk."""

    labels: tuple[str, ...]
    risk: str = "unknown"  # low | high | unknown (the high-risk row, said in the SR)


@dataclass(frozen=True, slots=True, kw_only=True)
class Recommendation:
    """Decision support: a positive finding ``finding`` suggests this follow-up."""

    finding: str
    code: tuple[str, str, str]
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryConfig:
    """How result objects are sent to destinations and retried."""

    check_interval_s: float = 0.5
    max_attempts: int = 20
    retry_wait_s: float = 10.0
    retry_backoff: float = 2.0
    retry_max_wait_s: float = 1800.0
    connect_timeout_s: float = 10.0
    dimse_timeout_s: float = 60.0

    @property
    def retry(self) -> RetryPolicy:
        """The deliveries' retry policy, as data (storage.deliveries applies it)."""
        return _policy(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultsConfig:
    """Identity written into every result object (Contributing Equipment, observer)."""

    manufacturer: str = "ainode"
    institution_name: str = ""
    device_serial_number: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceConfig:
    """``[inference]``: the worker processes that run the models."""

    workers: int = 1
    device: str = "auto"
    batch_size: int = 4
    amp: bool = True
    poll_interval_s: float = 1.0
    heartbeat_s: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    """``[logging]``."""

    level: str = "INFO"
    pynetdicom_level: str = "WARNING"
    format: str = "text"  # or "json": one JSON object a line, for log collectors


@dataclass(frozen=True, slots=True, kw_only=True)
class SyslogTarget:
    """Where audit messages go: RFC 5426 (UDP), RFC 6587 (TCP) or RFC 5425 (TLS)."""

    transport: str  # "udp", "tcp" or "tcp+tls"
    host: str
    port: int
    tls: ClientTls | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditConfig:
    """``[audit]``: DICOM audit messages (PS3.15 A.5), always to ``file``, and to syslog."""

    file: Path
    syslog: SyslogTarget | None = None
    enterprise_site_id: str = ""
    source_id: str = ""  # AuditSourceID; "" = this host's name


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionConfig:
    """``[retention]``: what the node deletes, and when (storage.retention)."""

    instances_days: float | None = None  # after the study was processed; None: keep
    results_days: float | None = None  # after the result was written; None: keep
    check_interval_s: float = 60.0
    # Below [storage] min_free_mb, evict the oldest processed studies before refusing.
    evict_when_full: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportConfig:
    """``[export]``: the de-identified training-set export (``ainode export``)."""

    secret_file: Path | None = None  # None: export refused (no key for pseudonyms and UIDs)
    allow_burned_in: bool = False
    keep_private_creators: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class WebConfig:
    """``[web]``: the dashboard, /metrics and /healthz, served by ``ainode serve``."""

    enabled: bool = True
    bind_address: str = "127.0.0.1"
    port: int = 8080
    admin_token_file: Path | None = None  # None: admin actions disabled


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """The whole validated configuration."""

    path: Path
    node: ListenerConfig
    storage: StorageConfig
    completion: CompletionConfig = field(default_factory=CompletionConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    peers: tuple[PeerConfig, ...] = ()
    pipelines: tuple[PipelineConfig, ...] = ()
    destinations: tuple[DestinationConfig, ...] = ()
    sources: tuple[SourceConfig, ...] = ()
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    audit: AuditConfig | None = None  # None only in records built by hand (tests)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    web: WebConfig = field(default_factory=WebConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    database: DatabaseConfig | None = None  # None: SQLite at storage.database_path

    def destination(self, name: str) -> DestinationConfig:
        return next(d for d in self.destinations if d.name == name)

    def source(self, name: str) -> SourceConfig:
        return next(d for d in self.sources if d.name == name)
