"""The audit trail: DICOM audit messages (PS3.15 A.5) as RFC 5424 syslog frames.

Every message is appended, whole and fsynced, as one line to the local audit
file (``[audit] file``) by whichever ainode process saw the event — listeners,
``serve``, the CLI — and ``serve`` forwards the file to the syslog target
(:mod:`node.audit_send`). The file is the buffer: a target that is down loses
nothing, it gets the backlog when it is back.

Events (EventID, PS3.15 A.5.3, codes DCM unless noted):

- 110100 Application Activity: ``serve`` started (110120) or stopped (110121);
- 110113 Security Alert: a caller refused (110126 Node Authentication: not a
  peer, wrong host or certificate, a failed TLS handshake), and admin actions
  (110132 Use of Restricted Function: replaying a job or a delivery, a purge);
- 110102 Begin Transferring DICOM Instances: the first instance of a study on
  an association (received), or a batch about to be sent to a PACS;
- 110104 DICOM Instances Transferred: per association and study, what the node
  received (action C) or sent to a PACS (action R), with the patient, the
  study and each SOP class with its number of instances;
- 110105 DICOM Study Deleted: a study purged (action D);
- 110106 Export: a study written, de-identified, into a training-set export
  (``ainode export``; action R), with the folder as Destination Media.

Audit messages name the Patient ID, as the standard asks; operational logs
still never carry patient names or birth dates.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.config import AuditConfig

__all__ = [
    "AssociationAudit",
    "Auditor",
    "StudyTransfer",
    "parse_frame",
]

logger = logging.getLogger(__name__)

_FACILITY_AUTHPRIV = 10
_SEVERITY = {0: 5, 4: 4, 8: 3, 12: 3}  # outcome -> syslog notice / warning / error
_MSGID = "DICOM+RFC3881"


def _code(parent: ET.Element, tag: str, code: str, meaning: str, scheme: str = "DCM") -> None:
    ET.SubElement(
        parent, tag, {"csd-code": code, "codeSystemName": scheme, "originalText": meaning}
    )


@dataclass(slots=True)
class StudyTransfer:
    """What one association moved for one study."""

    patient_id: str
    sop_classes: dict[str, int] = field(default_factory=dict)


class Auditor:
    """Builds audit messages and appends them to the audit file (thread- and process-safe)."""

    def __init__(self, cfg: AuditConfig, ae_title: str) -> None:
        self.cfg = cfg
        self.ae_title = ae_title
        self.host = socket.gethostname()
        self.source_id = cfg.source_id or self.host
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ events

    def application(self, *, started: bool) -> None:
        msg = self._message("110100", "Application Activity", "E", 0)
        event = msg.find("EventIdentification")
        assert event is not None
        if started:
            _code(event, "EventTypeCode", "110120", "Application Start")
        else:
            _code(event, "EventTypeCode", "110121", "Application Stop")
        self._me(msg, requestor=False, role=("110150", "Application"))
        self._write(msg, 0)

    def refused(self, *, who: str, address: str, reason: str) -> None:
        """A caller refused (access control, TLS): Security Alert, Node Authentication."""
        msg = self._message("110113", "Security Alert", "E", 4)
        event = msg.find("EventIdentification")
        assert event is not None
        _code(event, "EventTypeCode", "110126", "Node Authentication")
        self._participant(msg, who, address, requestor=True, role=None)
        self._me(msg, requestor=False, role=None)
        self._object_text(msg, f"{who} from {address}: {reason}")
        self._write(msg, 4)

    def restricted(self, *, user: str, action: str, detail: str) -> None:
        """An admin action: Security Alert, Use of Restricted Function."""
        msg = self._message("110113", "Security Alert", "E", 0)
        event = msg.find("EventIdentification")
        assert event is not None
        _code(event, "EventTypeCode", "110132", "Use of Restricted Function")
        self._participant(msg, user, "", requestor=True, role=None)
        self._me(msg, requestor=False, role=None)
        self._object_text(msg, f"{action}: {detail}")
        self._write(msg, 0)

    def transferred(
        self,
        *,
        received: bool,
        remote_ae: str,
        remote_address: str,
        studies: Mapping[str, StudyTransfer],
        failed: bool = False,
    ) -> None:
        """DICOM Instances Transferred: one message per study of one association."""
        outcome = 4 if failed else 0
        for study_uid, transfer in studies.items():
            msg = self._message(
                "110104", "DICOM Instances Transferred", "C" if received else "R", outcome
            )
            source = ("110153", "Source Role ID")
            destination = ("110152", "Destination Role ID")
            self._participant(
                msg,
                remote_ae,
                remote_address,
                requestor=received,
                role=source if received else destination,
            )
            self._me(msg, requestor=not received, role=destination if received else source)
            self._study(msg, study_uid, transfer)
            self._write(msg, outcome)

    def begin_transfer(
        self, *, received: bool, remote_ae: str, remote_address: str, studies: Mapping[str, str]
    ) -> None:
        """Begin Transferring DICOM Instances: ``studies`` maps Study Instance UID -> Patient ID."""
        for study_uid, patient_id in studies.items():
            msg = self._message("110102", "Begin Transferring DICOM Instances", "E", 0)
            source = ("110153", "Source Role ID")
            destination = ("110152", "Destination Role ID")
            self._participant(
                msg,
                remote_ae,
                remote_address,
                requestor=received,
                role=source if received else destination,
            )
            self._me(msg, requestor=not received, role=destination if received else source)
            self._study(msg, study_uid, StudyTransfer(patient_id=patient_id))
            self._write(msg, 0)

    def queried(self, *, remote_ae: str, remote_address: str, patient_id: str, detail: str) -> None:
        """Query (PS3.15 A.5.3.11): this node asked a source about a patient's studies."""
        msg = self._message("110112", "Query", "E", 0)
        self._me(msg, requestor=True, role=("110153", "Source Role ID"))
        self._participant(
            msg, remote_ae, remote_address, requestor=False, role=("110152", "Destination Role ID")
        )
        self._study(msg, "", StudyTransfer(patient_id=patient_id), description=detail)
        self._write(msg, 0)

    def study_deleted(self, *, study_uid: str, patient_id: str, user: str, reason: str) -> None:
        msg = self._message("110105", "DICOM Study Deleted", "D", 0)
        self._participant(msg, user, "", requestor=True, role=None)
        self._me(msg, requestor=False, role=None)
        self._study(msg, study_uid, StudyTransfer(patient_id=patient_id), description=reason)
        self._write(msg, 0)

    def exported(
        self, *, user: str, destination: str, studies: Mapping[str, StudyTransfer]
    ) -> None:
        """Export (PS3.15 A.5.3.5): each study that went, de-identified, into ``destination``."""
        for study_uid, transfer in studies.items():
            msg = self._message("110106", "Export", "R", 0)
            self._participant(msg, user, "", requestor=True, role=None)
            self._me(msg, requestor=False, role=("110153", "Source Role ID"))
            media = ("110154", "Destination Media")
            self._participant(msg, destination, "", requestor=False, role=media)
            self._study(msg, study_uid, transfer, description="de-identified export")
            self._write(msg, 0)

    # ---------------------------------------------------------------- building

    def _message(self, code: str, meaning: str, action: str, outcome: int) -> ET.Element:
        msg = ET.Element("AuditMessage")
        event = ET.SubElement(
            msg,
            "EventIdentification",
            {
                "EventActionCode": action,
                "EventDateTime": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "EventOutcomeIndicator": str(outcome),
            },
        )
        _code(event, "EventID", code, meaning)
        return msg

    def _participant(
        self,
        msg: ET.Element,
        user: str,
        address: str,
        *,
        requestor: bool,
        role: tuple[str, str] | None,
    ) -> None:
        attrs = {"UserID": user or "unknown", "UserIsRequestor": str(requestor).lower()}
        if address:
            attrs |= {"NetworkAccessPointID": address, "NetworkAccessPointTypeCode": "2"}
        element = ET.SubElement(msg, "ActiveParticipant", attrs)
        if role is not None:
            _code(element, "RoleIDCode", *role)

    def _me(self, msg: ET.Element, *, requestor: bool, role: tuple[str, str] | None) -> None:
        element = ET.SubElement(
            msg,
            "ActiveParticipant",
            {
                "UserID": self.ae_title,
                "AlternativeUserID": str(os.getpid()),
                "UserIsRequestor": str(requestor).lower(),
                "NetworkAccessPointID": self.host,
                "NetworkAccessPointTypeCode": "1",
            },
        )
        _code(element, "RoleIDCode", *(role or ("110150", "Application")))
        source = ET.SubElement(
            msg,
            "AuditSourceIdentification",
            {"AuditSourceID": self.source_id}
            | ({"AuditEnterpriseSiteID": s} if (s := self.cfg.enterprise_site_id) else {}),
        )
        ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4"})  # application server

    def _study(
        self, msg: ET.Element, study_uid: str, transfer: StudyTransfer, description: str = ""
    ) -> None:
        study = ET.SubElement(
            msg,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": study_uid,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        _code(study, "ParticipantObjectIDTypeCode", "110180", "Study Instance UID")
        if transfer.sop_classes or description:
            desc = ET.SubElement(study, "ParticipantObjectDescription")
            if description:
                desc.text = description
            for uid, count in sorted(transfer.sop_classes.items()):
                ET.SubElement(desc, "SOPClass", {"UID": uid, "NumberOfInstances": str(count)})
        if transfer.patient_id:
            patient = ET.SubElement(
                msg,
                "ParticipantObjectIdentification",
                {
                    "ParticipantObjectID": transfer.patient_id,
                    "ParticipantObjectTypeCode": "1",
                    "ParticipantObjectTypeCodeRole": "1",
                },
            )
            ET.SubElement(
                patient,
                "ParticipantObjectIDTypeCode",
                {"csd-code": "2", "originalText": "Patient Number"},
            )

    def _object_text(self, msg: ET.Element, text: str) -> None:
        element = ET.SubElement(
            msg,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": self.ae_title,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "13",  # security resource
            },
        )
        _code(element, "ParticipantObjectIDTypeCode", "110182", "Node ID")
        ET.SubElement(element, "ParticipantObjectDetail", {"type": "Alert Description"}).text = text

    # ----------------------------------------------------------------- writing

    def _write(self, msg: ET.Element, outcome: int) -> None:
        """Append one RFC 5424 frame as one line, fsynced; never raises (logs instead)."""
        xml = ET.tostring(msg, encoding="unicode").replace("\n", " ").replace("\r", " ")
        pri = _FACILITY_AUTHPRIV * 8 + _SEVERITY.get(outcome, 3)
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        frame = f"<{pri}>1 {stamp} {self.host} ainode {os.getpid()} {_MSGID} - {xml}\n"
        try:
            with self._lock:
                self.cfg.file.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.cfg.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    os.write(fd, frame.encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError:
            # An audit trail that cannot be written must not stop DICOM traffic.
            logger.exception("cannot append to the audit file %s", self.cfg.file)


def parse_frame(frame: str) -> tuple[int, str, ET.Element]:
    """(PRI, MSGID, the AuditMessage) of one frame as written above (for tests and tools)."""
    head, _, xml = frame.partition(" - ")
    pri = int(head[1 : head.index(">")])
    msgid = head.split()[-1]
    return pri, msgid, ET.fromstring(xml)


class AssociationAudit:
    """What each incoming association stored, audited when its connection closes."""

    def __init__(self, auditor: Auditor | None) -> None:
        self.auditor = auditor
        self._lock = threading.Lock()
        self._open: dict[int, tuple[Any, dict[str, StudyTransfer]]] = {}

    def stored(self, assoc: Any, study_uid: str, patient_id: str, sop_class_uid: str) -> None:
        if self.auditor is None:
            return
        with self._lock:
            _assoc, studies = self._open.setdefault(id(assoc), (assoc, {}))
            first = study_uid not in studies
            transfer = studies.setdefault(study_uid, StudyTransfer(patient_id=patient_id))
            transfer.sop_classes[sop_class_uid] = transfer.sop_classes.get(sop_class_uid, 0) + 1
        if first:
            self.auditor.begin_transfer(
                received=True,
                remote_ae=str(assoc.requestor.ae_title).strip(),
                remote_address=str(assoc.requestor.address),
                studies={study_uid: patient_id},
            )

    def closed(self, assoc: Any, *, aborted: bool) -> None:
        if self.auditor is None:
            return
        with self._lock:
            entry = self._open.pop(id(assoc), None)
        if entry is None:
            return
        self.auditor.transferred(
            received=True,
            remote_ae=str(assoc.requestor.ae_title).strip(),
            remote_address=str(assoc.requestor.address),
            studies=entry[1],
            failed=aborted,
        )
