"""Query/Retrieve SCU: C-FIND, C-MOVE and C-GET against a ``[[sources]]`` PACS (study root).

Plain functions over the source's record; each opens one association and
releases it. Failures are two kinds: :class:`SourceUnavailable` (no
association, no answer in time, an association that broke: worth a retry
later) and :class:`SourceRefused` (an error status or identifiers that are not
what was asked: retrying does not help). Every query and retrieve is logged
with the source and the UIDs, never names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from core.config import DestinationConfig, SourceConfig
from node.send import PLAIN_SYNTAXES, AssociationFailed, associate, new_ae, settle_reactor

__all__ = [
    "GET_STORAGE_CLASSES",
    "FoundSeries",
    "FoundStudy",
    "RetrieveOutcome",
    "SourceRefused",
    "SourceUnavailable",
    "find_series",
    "find_studies",
    "retrieve_series",
]

logger = logging.getLogger(__name__)

_PENDING = {0xFF00, 0xFF01}
_SUCCESS = 0x0000
_MOVE_WARNING = 0xB000  # some sub-operations failed

#: Storage SOP classes a C-GET accepts back (with the SCP role): the image
#: kinds priors come in. A C-GET association holds at most 128 contexts.
GET_STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET
    "1.2.840.10008.5.1.4.1.1.20",  # NM
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX presentation
    "1.2.840.10008.5.1.4.1.1.1.2",  # MG presentation
    "1.2.840.10008.5.1.4.1.1.6.1",  # US
    "1.2.840.10008.5.1.4.1.1.3.1",  # US multi-frame
    "1.2.840.10008.5.1.4.1.1.12.1",  # XA
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.9.1.1",  # 12-lead ECG
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
)


class SourceUnavailable(Exception):
    """The source cannot be reached or did not answer in time: try again later."""


class SourceRefused(Exception):
    """The source answered with an error status or malformed identifiers."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FoundStudy:
    study_instance_uid: str
    study_date: str
    instances: int | None  # Number of Study Related Instances, when the source says


@dataclass(frozen=True, slots=True, kw_only=True)
class FoundSeries:
    series_instance_uid: str
    modality: str
    instances: int | None  # Number of Series Related Instances, when the source says


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrieveOutcome:
    completed: int
    failed: int
    warning: int


def _as_destination(source: SourceConfig) -> DestinationConfig:
    """The association parameters ``node.send.associate`` takes (TLS included)."""
    return DestinationConfig(
        name=source.name,
        ae_title=source.ae_title,
        host=source.host,
        port=source.port,
        tls=source.tls,
    )


def _open(ae: AE, source: SourceConfig, handlers: Sequence[Any] = (), roles: Any = None) -> Any:
    try:
        return associate(ae, _as_destination(source), handlers, roles)
    except AssociationFailed as exc:
        raise SourceUnavailable(str(exc)) from None


def _find(source: SourceConfig, query: Dataset, calling_ae: str) -> Iterator[Dataset]:
    ae = new_ae(calling_ae, source.connect_timeout_s, source.dimse_timeout_s)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, PLAIN_SYNTAXES)
    assoc = _open(ae, source)
    try:
        answers = []
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            if not status:
                raise SourceUnavailable(
                    f"C-FIND at {source.name}: no answer within {source.dimse_timeout_s:g} s "
                    "or the association broke"
                )
            code = int(status.Status)
            if code in _PENDING:
                if identifier is None:
                    raise SourceRefused(f"C-FIND at {source.name}: a match without identifier")
                answers.append(identifier)
            elif code != _SUCCESS:
                comment = str(status.get("ErrorComment", ""))
                raise SourceRefused(
                    f"C-FIND at {source.name} failed: status 0x{code:04X}"
                    + (f" ({comment})" if comment else "")
                )
        return iter(answers)
    finally:
        if assoc.is_established:
            assoc.release()


def _number(identifier: Dataset, keyword: str, source: SourceConfig) -> int | None:
    value = identifier.get(keyword)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SourceRefused(
            f"C-FIND at {source.name}: {keyword} {value!r} is not a number"
        ) from None


def _uid(identifier: Dataset, keyword: str, source: SourceConfig) -> str:
    value = str(identifier.get(keyword, "") or "")
    if not value or len(value) > 64 or not all(c.isdigit() or c == "." for c in value):
        raise SourceRefused(f"C-FIND at {source.name}: a match with {keyword} {value[:70]!r}")
    return value


def find_studies(
    source: SourceConfig, *, patient_id: str, issuer: str = "", before: str, calling_ae: str
) -> list[FoundStudy]:
    """The patient's studies dated before ``before`` (YYYYMMDD), newest first."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    if issuer:
        query.IssuerOfPatientID = issuer
    query.StudyDate = f"-{before}"
    query.StudyInstanceUID = ""
    query.NumberOfStudyRelatedInstances = ""
    found = []
    for identifier in _find(source, query, calling_ae):
        date = str(identifier.get("StudyDate", "") or "")
        found.append(
            FoundStudy(
                study_instance_uid=_uid(identifier, "StudyInstanceUID", source),
                study_date=date,
                instances=_number(identifier, "NumberOfStudyRelatedInstances", source),
            )
        )
    # A range match includes the day itself: a prior is strictly earlier.
    found = [f for f in found if f.study_date and f.study_date < before]
    logger.info(
        "C-FIND STUDY at %s for a patient's studies before %s: %d found",
        source.name,
        before,
        len(found),
    )
    return sorted(found, key=lambda f: f.study_date, reverse=True)


def find_series(source: SourceConfig, *, study_uid: str, calling_ae: str) -> list[FoundSeries]:
    """The series of a study with their modality and instance count."""
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.Modality = ""
    query.NumberOfSeriesRelatedInstances = ""
    found = [
        FoundSeries(
            series_instance_uid=_uid(identifier, "SeriesInstanceUID", source),
            modality=str(identifier.get("Modality", "") or ""),
            instances=_number(identifier, "NumberOfSeriesRelatedInstances", source),
        )
        for identifier in _find(source, query, calling_ae)
    ]
    logger.info("C-FIND SERIES at %s of study %s: %d series", source.name, study_uid, len(found))
    return found


def retrieve_series(
    source: SourceConfig,
    *,
    study_uid: str,
    series_uids: Sequence[str],
    calling_ae: str,
    on_store: Callable[[Any], Dataset],
) -> RetrieveOutcome:
    """Retrieve series of a study into this node: C-MOVE to ``calling_ae``, or C-GET.

    ``on_store``: the C-STORE handler for instances a C-GET brings back on
    this association (a C-MOVE's arrive at the listener instead).
    """
    method = source.retrieve
    model = (
        StudyRootQueryRetrieveInformationModelGet
        if method == "get"
        else StudyRootQueryRetrieveInformationModelMove
    )
    ae = new_ae(calling_ae, source.connect_timeout_s, source.retrieve_timeout_s)
    ae.add_requested_context(model, PLAIN_SYNTAXES)
    roles = None
    handlers: list[Any] = []
    if method == "get":
        for uid in GET_STORAGE_CLASSES:
            ae.add_requested_context(uid, PLAIN_SYNTAXES)
        roles = [build_role(uid, scp_role=True) for uid in GET_STORAGE_CLASSES]
        handlers = [(evt.EVT_C_STORE, on_store)]
    assoc = _open(ae, source, handlers, roles)
    completed = failed = warning = 0
    try:
        for series_uid in series_uids:
            query = Dataset()
            query.QueryRetrieveLevel = "SERIES"
            query.StudyInstanceUID = study_uid
            query.SeriesInstanceUID = series_uid
            responses = (
                assoc.send_c_get(query, model)
                if method == "get"
                else assoc.send_c_move(query, calling_ae, model)
            )
            final = None
            for status, _identifier in responses:
                if not status:
                    raise SourceUnavailable(
                        f"C-{method.upper()} at {source.name}: no answer within "
                        f"{source.retrieve_timeout_s:g} s or the association broke"
                    )
                final = status
            settle_reactor(assoc)  # before the next series' request (node.send.settle_reactor)
            assert final is not None
            code = int(final.Status)
            done = int(final.get("NumberOfCompletedSuboperations", 0) or 0)
            bad = int(final.get("NumberOfFailedSuboperations", 0) or 0)
            warned = int(final.get("NumberOfWarningSuboperations", 0) or 0)
            completed, failed, warning = completed + done, failed + bad, warning + warned
            logger.info(
                "C-%s at %s of series %s (study %s): status 0x%04X, %d completed, %d failed",
                method.upper(),
                source.name,
                series_uid,
                study_uid,
                code,
                done,
                bad,
            )
            if code not in (_SUCCESS, _MOVE_WARNING):
                comment = str(final.get("ErrorComment", ""))
                error = SourceUnavailable if 0xA700 <= code <= 0xA7FF else SourceRefused
                raise error(
                    f"C-{method.upper()} at {source.name} of series {series_uid} failed: "
                    f"status 0x{code:04X}" + (f" ({comment})" if comment else "")
                )
    finally:
        if assoc.is_established:
            assoc.release()
    return RetrieveOutcome(completed=completed, failed=failed, warning=warning)
