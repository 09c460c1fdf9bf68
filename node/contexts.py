"""What the listener accepts: presentation contexts, the same for both receive paths."""

from __future__ import annotations

from typing import cast

from pynetdicom import ALL_TRANSFER_SYNTAXES, sop_class
from pynetdicom.service_class import StorageServiceClass

__all__ = ["ALL_TRANSFER_SYNTAXES", "UNCOMPRESSED", "VERIFICATION", "storage_sop_class_uids"]

VERIFICATION = "1.2.840.10008.1.1"
UNCOMPRESSED = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"]


def storage_sop_class_uids() -> list[str]:
    """Every storage SOP class pynetdicom knows (images, SR, SEG, waveforms, PDF...)."""
    uids = {
        str(obj)
        for obj in vars(sop_class).values()
        if isinstance(obj, sop_class.SOPClass)
        and cast(object, obj.service_class) is StorageServiceClass
    }
    return sorted(uids)
