"""``config.toml`` loaded once into frozen, validated records.

Every error names the TOML key and the rule it broke, e.g.::

    config.toml: [node] ae_title: must be at most 16 characters (got 17)

Relative paths inside the file resolve against the folder that holds it, so one
checkout can run several nodes, each from its own config file.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

__all__ = [
    "CompletionConfig",
    "CompletionLevel",
    "ConfigError",
    "DeliveryConfig",
    "DestinationConfig",
    "DuplicatePolicy",
    "InferenceConfig",
    "ListenerConfig",
    "LoggingConfig",
    "NodeConfig",
    "PeerConfig",
    "PipelineConfig",
    "QueueConfig",
    "Recommendation",
    "ResultsConfig",
    "SeriesRule",
    "StorageConfig",
    "default_config_path",
    "load_config",
    "validate_ae_title",
]

ENV_CONFIG = "AINODE_CONFIG"

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or breaks a rule."""


class DuplicatePolicy(enum.StrEnum):
    """What to do when a SOP Instance UID arrives that is already stored."""

    KEEP = "keep"
    REPLACE = "replace"


class CompletionLevel(enum.StrEnum):
    """Whether the quiet period closes a whole study or each series alone."""

    STUDY = "study"
    SERIES = "series"


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig:
    """``[node]``: the DICOM listener."""

    ae_title: str = "AINODE"
    bind_address: str = "127.0.0.1"
    port: int = 11112
    listener_processes: int = 1
    max_associations: int = 16
    max_pdu_bytes: int = 4 * 1024 * 1024
    network_timeout_s: float = 60.0
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    shutdown_grace_s: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerConfig:
    """``[[peers]]``: one caller allowed to associate."""

    ae_title: str
    host: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None

    def allows(self, ae_title: str, address: str) -> bool:
        """Return whether a caller with this AE title and IP address matches."""
        if ae_title.strip() != self.ae_title:
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
class CompletionConfig:
    """``[completion]``: when a study (or series) counts as complete."""

    level: CompletionLevel = CompletionLevel.STUDY
    quiet_period_s: float = 20.0
    check_interval_s: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    """``[queue]``: leases and the retry policy of jobs."""

    lease_s: float = 300.0
    lease_check_interval_s: float = 5.0
    max_attempts: int = 3
    retry_wait_s: float = 30.0
    retry_backoff: float = 2.0
    retry_max_wait_s: float = 3600.0


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Recommendation:
    """Decision support: a positive finding ``finding`` suggests this follow-up."""

    finding: str
    code: tuple[str, str, str]
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationConfig:
    """A DICOM node that receives result objects (C-STORE SCP)."""

    name: str
    ae_title: str
    host: str
    port: int


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
    batch_size: int = 8
    amp: bool = True
    poll_interval_s: float = 1.0
    heartbeat_s: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    """``[logging]``."""

    level: str = "INFO"
    pynetdicom_level: str = "WARNING"


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
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)

    def destination(self, name: str) -> DestinationConfig:
        return next(d for d in self.destinations if d.name == name)


def default_config_path() -> Path:
    """``$AINODE_CONFIG`` if set, else ``./config.toml``."""
    return Path(os.environ.get(ENV_CONFIG, "config.toml"))


def validate_ae_title(value: object, key: str) -> str:
    """Return a valid AE title or raise :class:`ConfigError` naming ``key``.

    PS3.5 6.2: at most 16 characters of the default repertoire, no backslash,
    no control characters, not only spaces.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string (got {type(value).__name__})")
    if len(value) > 16:
        raise ConfigError(f"{key}: must be at most 16 characters (got {len(value)})")
    if "\\" in value:
        raise ConfigError(f"{key}: must not contain a backslash")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConfigError(f"{key}: must not contain control characters")
    if any(ord(c) > 0x7E for c in value):
        raise ConfigError(f"{key}: must use ASCII characters only")
    if not value.strip():
        raise ConfigError(f"{key}: must not be empty or only spaces")
    return value.strip()


T = TypeVar("T")


class _Table:
    """Reads one TOML table, tracking which keys were used."""

    def __init__(self, data: object, name: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{name}: must be a table")
        self._data: dict[str, Any] = dict(data)
        self._name = name

    def key(self, key: str) -> str:
        return f"{self._name} {key}" if self._name else key

    def _get(self, key: str, default: T, kinds: tuple[type, ...], what: str) -> T:
        if key not in self._data:
            return default
        value = self._data.pop(key)
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(f"{self.key(key)}: must be {what} (got {value!r})")
        if not isinstance(value, kinds):
            raise ConfigError(f"{self.key(key)}: must be {what} (got {value!r})")
        return value  # type: ignore[return-value]

    def string(self, key: str, default: str) -> str:
        return self._get(key, default, (str,), "a string")

    def integer(self, key: str, default: int, low: int, high: int | None = None) -> int:
        value = self._get(key, default, (int,), "an integer")
        self._check_range(key, value, low, high)
        return value

    def number(self, key: str, default: float, low: float, high: float | None = None) -> float:
        value = float(self._get(key, default, (int, float), "a number"))
        self._check_range(key, value, low, high)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return self._get(key, default, (bool,), "true or false")

    def strings(self, key: str) -> tuple[str, ...]:
        empty: list[object] = []
        value: object = self._get(key, empty, (list, str), "a string or a list of strings")
        items = [value] if isinstance(value, str) else cast(list[object], value)
        if not all(isinstance(v, str) and v for v in items):
            raise ConfigError(f"{self.key(key)}: must be a string or a list of strings")
        return tuple(str(v) for v in items)

    def choice(self, key: str, default: T, parse: Callable[[str], T], options: str) -> T:
        if key not in self._data:
            return default
        raw = self.string(key, "")
        try:
            return parse(raw)
        except ValueError:
            raise ConfigError(f"{self.key(key)}: must be one of {options} (got {raw!r})") from None

    def _check_range(self, key: str, value: float, low: float, high: float | None) -> None:
        if value < low:
            raise ConfigError(f"{self.key(key)}: must be at least {low} (got {value})")
        if high is not None and value > high:
            raise ConfigError(f"{self.key(key)}: must be at most {high} (got {value})")

    def raw(self, key: str) -> object:
        return self._data.pop(key, None)

    def finish(self) -> None:
        """Reject keys that no rule read: a typo must not pass silently."""
        if self._data:
            unknown = ", ".join(sorted(self._data))
            raise ConfigError(f"{self._name or 'top level'}: unknown key(s): {unknown}")


def _listener(table: _Table) -> ListenerConfig:
    d = ListenerConfig()
    ae_title = validate_ae_title(table.string("ae_title", d.ae_title), table.key("ae_title"))
    bind = table.string("bind_address", d.bind_address)
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        raise ConfigError(
            f"{table.key('bind_address')}: must be an IPv4 or IPv6 address (got {bind!r})"
        ) from None
    cfg = ListenerConfig(
        ae_title=ae_title,
        bind_address=bind,
        port=table.integer("port", d.port, 1, 65535),
        listener_processes=table.integer("listener_processes", d.listener_processes, 1, 64),
        max_associations=table.integer("max_associations", d.max_associations, 1, 1000),
        max_pdu_bytes=table.integer("max_pdu_bytes", d.max_pdu_bytes, 0, 2**32 - 1),
        network_timeout_s=table.number("network_timeout_s", d.network_timeout_s, 1),
        acse_timeout_s=table.number("acse_timeout_s", d.acse_timeout_s, 1),
        dimse_timeout_s=table.number("dimse_timeout_s", d.dimse_timeout_s, 1),
        shutdown_grace_s=table.number("shutdown_grace_s", d.shutdown_grace_s, 0),
    )
    if 0 < cfg.max_pdu_bytes < 4096:
        raise ConfigError(
            f"{table.key('max_pdu_bytes')}: must be 0 (unlimited) or at least 4096 "
            f"(got {cfg.max_pdu_bytes})"
        )
    table.finish()
    return cfg


def _storage(table: _Table, base: Path) -> StorageConfig:
    data_dir = Path(table.string("data_dir", "data")).expanduser()
    if not data_dir.is_absolute():
        data_dir = base / data_dir
    if not data_dir.parent.is_dir():
        raise ConfigError(
            f"{table.key('data_dir')}: the folder that holds it must exist "
            f"({data_dir.parent} does not)"
        )
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"{table.key('data_dir')}: {data_dir} exists and is not a folder")
    cfg = StorageConfig(
        data_dir=data_dir,
        on_duplicate=table.choice(
            "on_duplicate", DuplicatePolicy.KEEP, DuplicatePolicy, '"keep" or "replace"'
        ),
        min_free_mb=table.integer("min_free_mb", 1024, 0),
    )
    table.finish()
    return cfg


def _completion(table: _Table) -> CompletionConfig:
    d = CompletionConfig()
    cfg = CompletionConfig(
        level=table.choice("level", d.level, CompletionLevel, '"study" or "series"'),
        quiet_period_s=table.number("quiet_period_s", d.quiet_period_s, 0.1, 86400),
        check_interval_s=table.number("check_interval_s", d.check_interval_s, 0.05, 60),
    )
    table.finish()
    return cfg


def _queue(table: _Table) -> QueueConfig:
    d = QueueConfig()
    cfg = QueueConfig(
        lease_s=table.number("lease_s", d.lease_s, 1),
        lease_check_interval_s=table.number(
            "lease_check_interval_s", d.lease_check_interval_s, 0.05, 3600
        ),
        max_attempts=table.integer("max_attempts", d.max_attempts, 1, 100),
        retry_wait_s=table.number("retry_wait_s", d.retry_wait_s, 0),
        retry_backoff=table.number("retry_backoff", d.retry_backoff, 1),
        retry_max_wait_s=table.number("retry_max_wait_s", d.retry_max_wait_s, 0),
    )
    table.finish()
    return cfg


def _logging(table: _Table) -> LoggingConfig:
    def level(key: str, default: str) -> str:
        value = table.string(key, default).upper()
        if value not in _LOG_LEVELS:
            raise ConfigError(f"{table.key(key)}: must be one of {', '.join(_LOG_LEVELS)}")
        return value

    d = LoggingConfig()
    cfg = LoggingConfig(
        level=level("level", d.level),
        pynetdicom_level=level("pynetdicom_level", d.pynetdicom_level),
    )
    table.finish()
    return cfg


def _array_of_tables(raw: object, name: str) -> list[_Table]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"[[{name}]]: must be an array of tables")
    return [_Table(item, f"[[{name}]] #{i + 1}") for i, item in enumerate(raw)]


def _peers(raw: object) -> tuple[PeerConfig, ...]:
    peers = []
    for table in _array_of_tables(raw, "peers"):
        if "ae_title" not in table._data:
            raise ConfigError(f"{table.key('ae_title')}: is required")
        ae = validate_ae_title(table.raw("ae_title"), table.key("ae_title"))
        host_raw = table.raw("host")
        host = None
        if host_raw is not None:
            if not isinstance(host_raw, str):
                raise ConfigError(f"{table.key('host')}: must be a string")
            try:
                host = ipaddress.ip_network(host_raw, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{table.key('host')}: must be an IP address or network such as "
                    f'"10.0.0.5" or "10.0.0.0/24" (got {host_raw!r})'
                ) from None
        table.finish()
        peers.append(PeerConfig(ae_title=ae, host=host))
    return tuple(peers)


def _series_rule(raw: object, name: str) -> SeriesRule:
    table = _Table(raw or {}, name)
    pattern = table.string("series_description", "")
    try:
        compiled = re.compile(pattern, re.IGNORECASE) if pattern else None
    except re.error as exc:
        raise ConfigError(
            f"{table.key('series_description')}: not a valid regular expression: {exc}"
        ) from None
    rule = SeriesRule(
        modalities=tuple(m.upper() for m in table.strings("modality")),
        body_parts=tuple(b.upper() for b in table.strings("body_part")),
        series_description=compiled,
        sop_classes=table.strings("sop_class"),
        min_instances=table.integer("min_instances", 1, 1),
        axial_only=table.boolean("axial_only", False),
    )
    table.finish()
    return rule


def _pipelines(raw: object, base: Path) -> tuple[PipelineConfig, ...]:
    pipelines: list[PipelineConfig] = []
    for table in _array_of_tables(raw, "pipelines"):
        name = table.string("name", "")
        if not _NAME_RE.match(name):
            raise ConfigError(
                f"{table.key('name')}: is required: letters, digits, '_', '-', '.', "
                f"at most 64 characters (got {name!r})"
            )
        if any(p.name == name for p in pipelines):
            raise ConfigError(f"{table.key('name')}: must be unique ({name!r} repeats)")
        models = []
        for model in table.strings("models"):
            path = Path(model).expanduser()
            path = path if path.is_absolute() else base / path
            if not (path / "model.toml").is_file():
                raise ConfigError(
                    f"{table.key('models')}: {path} is not a model package (no model.toml)"
                )
            models.append(path)
        pipelines.append(
            PipelineConfig(
                name=name,
                priority=table.integer("priority", 100, 0, 1000),
                match=_series_rule(table.raw("match"), f"{table.key('match')}"),
                models=tuple(models),
                shadow=table.boolean("shadow", False),
                destinations=table.strings("destinations"),
                series_number=table.integer("series_number", 900, 1, 2**31 - 3),
                series_description=_text(table, "series_description", 48),
                recommendations=_recommendations(
                    table.raw("recommendations"), table.key("recommendations")
                ),
            )
        )
        table.finish()
    return tuple(pipelines)


def _text(table: _Table, key: str, limit: int) -> str:
    value = table.string(key, "")
    if len(value) > limit or "\\" in value:
        raise ConfigError(f"{table.key(key)}: at most {limit} characters, no backslash")
    return value


def _code(value: object, key: str) -> tuple[str, str, str]:
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise ConfigError(
            f'{key}: must be [value, scheme, meaning], e.g. ["103693007", "SCT", "Biopsy"]'
        )
    return (value[0], value[1], value[2])


def _recommendations(raw: object, name: str) -> tuple[Recommendation, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: must be a table of finding = {{ code = [...], text = ... }}")
    found = []
    for finding, item in raw.items():
        table = _Table(item, f"{name}.{finding}")
        code = _code(table.raw("code"), table.key("code"))
        text = _text(table, "text", 1024)
        table.finish()
        found.append(Recommendation(finding=finding, code=code, text=text))
    return tuple(found)


def _destinations(raw: object) -> tuple[DestinationConfig, ...]:
    found: list[DestinationConfig] = []
    for table in _array_of_tables(raw, "destinations"):
        name = table.string("name", "")
        if not _NAME_RE.match(name):
            raise ConfigError(
                f"{table.key('name')}: is required: letters, digits, '_', '-', '.', "
                f"at most 64 characters (got {name!r})"
            )
        if any(d.name == name for d in found):
            raise ConfigError(f"{table.key('name')}: must be unique ({name!r} repeats)")
        if "ae_title" not in table._data or "host" not in table._data:
            raise ConfigError(f"{table.key('ae_title')}, host and port: are required")
        ae = validate_ae_title(table.raw("ae_title"), table.key("ae_title"))
        host = table.string("host", "")
        if not host:
            raise ConfigError(f"{table.key('host')}: must be a host name or IP address")
        port = table.integer("port", 104, 1, 65535)
        table.finish()
        found.append(DestinationConfig(name=name, ae_title=ae, host=host, port=port))
    return tuple(found)


def _delivery(table: _Table) -> DeliveryConfig:
    d = DeliveryConfig()
    cfg = DeliveryConfig(
        check_interval_s=table.number("check_interval_s", d.check_interval_s, 0.05, 3600),
        max_attempts=table.integer("max_attempts", d.max_attempts, 1, 1000),
        retry_wait_s=table.number("retry_wait_s", d.retry_wait_s, 0, 86400),
        retry_backoff=table.number("retry_backoff", d.retry_backoff, 1, 10),
        retry_max_wait_s=table.number("retry_max_wait_s", d.retry_max_wait_s, 0, 7 * 86400),
        connect_timeout_s=table.number("connect_timeout_s", d.connect_timeout_s, 0.1, 600),
        dimse_timeout_s=table.number("dimse_timeout_s", d.dimse_timeout_s, 0.1, 3600),
    )
    table.finish()
    return cfg


def _results(table: _Table) -> ResultsConfig:
    d = ResultsConfig()
    cfg = ResultsConfig(
        manufacturer=_text(table, "manufacturer", 64) or d.manufacturer,
        institution_name=_text(table, "institution_name", 64),
        device_serial_number=_text(table, "device_serial_number", 64),
    )
    table.finish()
    return cfg


def _inference(table: _Table) -> InferenceConfig:
    d = InferenceConfig()
    cfg = InferenceConfig(
        workers=table.integer("workers", d.workers, 0, 64),
        device=table.choice("device", d.device, _device, '"auto", "cpu", "cuda" or "cuda:N"'),
        batch_size=table.integer("batch_size", d.batch_size, 1, 4096),
        amp=table.boolean("amp", d.amp),
        poll_interval_s=table.number("poll_interval_s", d.poll_interval_s, 0.05, 60),
        heartbeat_s=table.number("heartbeat_s", d.heartbeat_s, 0.1, 3600),
    )
    table.finish()
    return cfg


def _device(value: str) -> str:
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise ValueError(value)


def parse_config(data: dict[str, Any], path: Path) -> NodeConfig:
    """Validate the parsed TOML ``data`` of the file at ``path``."""
    top = _Table(data, "")
    base = path.resolve().parent

    def table(name: str) -> _Table:
        return _Table(top.raw(name) or {}, f"[{name}]")

    cfg = NodeConfig(
        path=path.resolve(),
        node=_listener(table("node")),
        storage=_storage(table("storage"), base),
        completion=_completion(table("completion")),
        queue=_queue(table("queue")),
        logging=_logging(table("logging")),
        inference=_inference(table("inference")),
        peers=_peers(top.raw("peers")),
        pipelines=_pipelines(top.raw("pipelines"), base),
        destinations=_destinations(top.raw("destinations")),
        delivery=_delivery(table("delivery")),
        results=_results(table("results")),
    )
    for p in cfg.pipelines:
        for name in p.destinations:
            if not any(d.name == name for d in cfg.destinations):
                raise ConfigError(
                    f"[[pipelines]] {p.name!r} destinations: {name!r} is not a "
                    f"[[destinations]] name"
                )
    if cfg.inference.heartbeat_s * 2 > cfg.queue.lease_s:
        raise ConfigError(
            f"[inference] heartbeat_s: must be at most half of [queue] lease_s "
            f"({cfg.inference.heartbeat_s} > {cfg.queue.lease_s} / 2)"
        )
    top.finish()
    return cfg


def load_config(path: Path | None = None) -> NodeConfig:
    """Read and validate the config file (default: :func:`default_config_path`)."""
    path = path or default_config_path()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return parse_config(data, path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
