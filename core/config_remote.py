"""Records of the remote DICOM nodes ainode calls: destinations and sources.

Part of the validated configuration (``core.config`` re-exports them); the
``[[destinations]]`` and ``[[sources]]`` tables are parsed in
``core.config_network`` and ``core.config_sources``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ClientTls", "DestinationConfig", "RetrieveMethod", "SourceConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientTls:
    """TLS to a peer the node calls: whom to trust, and the node's own certificate."""

    ca_bundle: Path | None = None  # None: the system's trusted CAs
    certificate: Path | None = None
    private_key: Path | None = None
    server_name: str | None = None  # the name the peer's certificate must carry


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationConfig:
    """A DICOM node that receives result objects (C-STORE SCP)."""

    name: str
    ae_title: str
    host: str
    port: int
    tls: ClientTls | None = None
    # Storage Commitment (Push Model): a delivery is "confirmed" only when the
    # destination's N-EVENT-REPORT commits it; without a report within the
    # timeout the object is sent again under the retry policy.
    storage_commitment: bool = False
    commitment_timeout_s: float = 300.0
    # The attention map (Parametric Map): "float" as written, "deflated" (Deflated
    # Explicit VR Little Endian, when the destination accepts it), or "off".
    heat_map: str = "float"


class RetrieveMethod:
    MOVE = "move"  # C-MOVE to this node's own AE title: the PACS must know it
    GET = "get"  # C-GET: the instances come back on the same association


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceConfig:
    """``[[sources]]``: a PACS (or VNA) that ainode queries and retrieves from.

    Priors for the pipelines that name it in ``priors_from``, and the instance
    counts that complete a study without waiting for the quiet period.
    """

    name: str
    ae_title: str
    host: str
    port: int
    tls: ClientTls | None = None
    retrieve: str = RetrieveMethod.MOVE
    counts: bool = True  # ask for Number of Series Related Instances of each new study
    connect_timeout_s: float = 10.0
    dimse_timeout_s: float = 60.0  # per response; a C-MOVE/C-GET may run much longer
    retrieve_timeout_s: float = 600.0
    max_studies_per_patient: int = 3  # newest prior studies retrieved per arriving study
    max_mb_per_hour: float = 5000.0  # a runaway prefetch stops here
    max_attempts: int = 10  # of one study's prefetch, then the job goes on without priors
    retry_wait_s: float = 10.0
