"""Who made a result: one algorithm record feeds every place DICOM names it.

Contributing Equipment (IHE AIR), the SR's device observer, TID 4019 algorithm
identification on each NUM and the SEG's Segmentation Algorithm Identification
all come from :class:`Algorithm`. The Device UID is derived from the model's
name, version and weights hash, so it is stable for one model build and changes
whenever the model is retrained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from core.config import ResultsConfig
from dicomio.records import Outcome

__all__ = [
    "AIR_PROCESSING_ALGORITHM",
    "Algorithm",
    "algorithm_of",
    "contributing_equipment",
    "declare_private_schemes",
    "derived_object",
    "device_observer",
    "node_device_uid",
    "segment_algorithm",
    "sr_algorithm",
]

NODE_NAME = "ainode"
NODE_VERSION = "0.1.0"

# IHE AIR Rev 1.1 6.5.3.1: Purpose of Reference of an AI algorithm's equipment item.
AIR_PROCESSING_ALGORITHM = hd.sr.CodedConcept(
    value="Newcode1", scheme_designator="99IHE", meaning="Processing Algorithm"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Algorithm:
    name: str
    version: str
    sha256: str
    device_uid: str


def algorithm_of(outcome: Outcome) -> Algorithm:
    return Algorithm(
        name=outcome.model_name,
        version=outcome.model_version,
        sha256=outcome.model_sha256,
        device_uid=generate_uid(
            entropy_srcs=[
                NODE_NAME,
                outcome.model_name,
                outcome.model_version,
                outcome.model_sha256,
            ]
        ),
    )


def node_device_uid(algorithms: Sequence[Algorithm]) -> str:
    """The device observer of a report made by several models: ainode with that model set."""
    return generate_uid(entropy_srcs=[NODE_NAME, *sorted(a.device_uid for a in algorithms)])


def contributing_equipment(
    algorithms: Sequence[Algorithm], cfg: ResultsConfig
) -> list[hd.ContributingEquipment]:
    """One item per algorithm used (AIR), with Device UID and the weights hash."""
    items = []
    for algo in algorithms:
        item = hd.ContributingEquipment(
            manufacturer=cfg.manufacturer,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=algo.name,
            software_versions=algo.version,
            device_serial_number=cfg.device_serial_number or None,
            institution_name=cfg.institution_name or None,
            contribution_description=f"{NODE_NAME} {NODE_VERSION}; weights sha256 {algo.sha256}",
        )
        # highdicom has no parameter for either (standards.md 3.1, 5.3).
        item.DeviceUID = algo.device_uid
        item.PurposeOfReferenceCodeSequence = [AIR_PROCESSING_ALGORITHM]
        items.append(item)
    return items


def sr_algorithm(algo: Algorithm) -> hd.sr.AlgorithmIdentification:
    """TID 4019 (no manufacturer: newer than the validators, standards.md 3.1)."""
    return hd.sr.AlgorithmIdentification(name=algo.name, version=algo.version)


def segment_algorithm(algo: Algorithm, cfg: ResultsConfig) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=algo.name,
        version=algo.version,
        family=codes.cid7162.ArtificialIntelligence,
        source=cfg.manufacturer,
    )


def device_observer(algorithms: Sequence[Algorithm], cfg: ResultsConfig) -> hd.sr.ObserverContext:
    names = "+".join(a.name for a in algorithms)
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=node_device_uid(algorithms),
            name=f"{NODE_NAME} {names}"[:64],
            manufacturer_name=cfg.manufacturer,
            model_name=names[:64],
            serial_number=cfg.device_serial_number or None,
        ),
    )


def derived_object(
    algorithm: Algorithm, cfg: ResultsConfig, *, series_number: int, series_description: str
) -> dict[str, object]:
    """The keyword arguments every image-like result (SEG, map) takes: new series and
    instance UIDs, the algorithm as equipment, and its Contributing Equipment item."""
    return {
        "series_instance_uid": hd.UID(),
        "series_number": series_number,
        "series_description": series_description,
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
        "manufacturer": cfg.manufacturer,
        "manufacturer_model_name": algorithm.name,
        "software_versions": algorithm.version,
        "device_serial_number": cfg.device_serial_number or "1",
        "contributing_equipment": contributing_equipment([algorithm], cfg),
    }


#: Private coding schemes the node's own codes use: (name, responsible organisation).
PRIVATE_SCHEMES = {
    "99AINODE": ("ainode private codes: guideline rules, foreign labels", "ainode project"),
    "99IHE": ("IHE provisional codes", "IHE"),
}
_CODING_SCHEME_DESIGNATOR = 0x00080102


def declare_private_schemes(dataset: Dataset) -> None:
    """Declare each private ("99...") coding scheme the object uses in its Coding Scheme
    Identification Sequence (PS3.3 C.12.1.1.2.1), so a reader can tell whose codes they are.

    A scheme from a model package's own label codes that ainode does not know is declared by
    its designator alone. Already declared schemes are left as they are.
    """
    used: set[str] = set()

    def collect(ds: Dataset) -> None:
        # Dataset.elements() hands each element over as stored: no conversion of values
        # (a SEG's 443 frames of functional groups: 0.2 s with Dataset.walk, per object).
        for stored in ds.elements():
            element = ds[stored.tag] if isinstance(stored, RawDataElement) else stored
            if element.tag == _CODING_SCHEME_DESIGNATOR and element.value:
                used.add(str(element.value))
            elif element.VR == "SQ":
                for item in element.value:
                    collect(item)

    collect(dataset)
    items = list(dataset.get("CodingSchemeIdentificationSequence", []))
    declared = {str(i.CodingSchemeDesignator) for i in items}
    for scheme in sorted(u for u in used - declared if u.startswith("99")):
        item = Dataset()
        item.CodingSchemeDesignator = scheme
        if scheme in PRIVATE_SCHEMES:
            name, organisation = PRIVATE_SCHEMES[scheme]
            item.CodingSchemeName = name
            item.CodingSchemeResponsibleOrganization = organisation
        items.append(item)
    if items:
        dataset.CodingSchemeIdentificationSequence = DicomSequence(items)
