"""A fast walk over a received dataset's elements for the few top-level values the index needs.

pydicom's ``read_dataset`` builds an element object for every attribute and
parses every undefined-length sequence: for a small instance that was 160-250 µs
of the ~1.6-2 ms a C-STORE costs the node, and most of the time the receive
threads hold the GIL. :func:`scan` walks the same bytes with ``struct`` and
keeps only the raw values asked for (20 µs for bench/make_study.py's small
instances).

It answers only where the answer is certain to be pydicom's: Little Endian
(implicit or explicit VR), standard VRs, every length inside the buffer, every
sequence and item closed where pydicom's reader would close it, each tag asked
for at most once. Anything else — a truncated value, an unknown VR, a stray
delimiter, trailing bytes, encapsulated data that pydicom would read another
way — returns ``None``, and the caller reads the dataset with pydicom as
before, which gives the same header or the same precise error. The test suite
checks both ways agree on every file of the pydicom corpus and on odd
hand-made datasets.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from functools import lru_cache

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR
from pydicom.values import convert_string

__all__ = ["scan"]

_TAG_LENGTH = struct.Struct("<HHI").unpack_from  # implicit VR, and items and delimiters
_TAG_VR_LENGTH = struct.Struct("<HH2sH").unpack_from  # explicit VR, 2-byte length
_LENGTH = struct.Struct("<I").unpack_from

# PS3.5 7.1.2: explicit VRs with a 4-byte length after two reserved bytes, and the rest.
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT"}
    | {b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_CHARSET = 0x00080005


class _NotCertain(Exception):
    """The bytes leave the common case: pydicom decides."""


@lru_cache(maxsize=64)
def _charset_converts(value: bytes) -> bool:
    try:
        convert_encodings(convert_string(value, True))
    except Exception:  # whatever pydicom raises, pydicom will raise it again
        return False
    return True


def _check_charset(value: bytes) -> None:
    """pydicom's reader converts every Specific Character Set as it meets it (to read
    nested text) and fails on one it cannot convert: so does the scan (a node sees
    few distinct values: each is converted once)."""
    if not _charset_converts(value):
        raise _NotCertain


class _Walk:
    __slots__ = ("buf", "found", "implicit", "wanted")

    def __init__(self, buf: memoryview, implicit: bool, wanted: Collection[int]) -> None:
        self.buf, self.implicit, self.wanted = buf, implicit, wanted
        self.found: dict[int, bytes] = {}

    def elements(self, pos: int, end: int, *, top: bool, item: bool) -> int:
        """Walk the elements from ``pos`` up to ``end`` (a defined length's end, or the
        buffer's); ``item``: an undefined-length item, ended by its delimiter.
        Returns the position after the last element (after the delimiter)."""
        buf = self.buf
        while pos < end:
            if pos + 8 > end:
                raise _NotCertain
            vr: bytes | None = None
            if self.implicit:
                group, elem, length = _TAG_LENGTH(buf, pos)
                pos += 8
            else:
                group, elem, vr, length = _TAG_VR_LENGTH(buf, pos)
                if group == 0xFFFE:
                    length = _LENGTH(buf, pos + 4)[0]
                    pos += 8
                    vr = None
                elif vr in _LONG_VRS:
                    if pos + 12 > end:
                        raise _NotCertain
                    length = _LENGTH(buf, pos + 8)[0]
                    pos += 12
                elif vr in _SHORT_VRS:
                    pos += 8
                else:
                    raise _NotCertain
            tag = group << 16 | elem
            if group == 0xFFFE:
                if item and tag == _ITEM_END:
                    return pos
                raise _NotCertain
            if length == _UNDEFINED:
                pos = self._undefined(tag, vr, pos, end)
                continue
            stop = pos + length
            if stop > end:
                raise _NotCertain
            if tag == _CHARSET:
                _check_charset(bytes(buf[pos:stop]))
            if top and tag in self.wanted:
                if tag in self.found:
                    raise _NotCertain
                self.found[tag] = bytes(buf[pos:stop])
            pos = stop
        if item or pos != end:
            raise _NotCertain
        return pos

    def _undefined(self, tag: int, vr: bytes | None, pos: int, end: int) -> int:
        """Skip an undefined-length value the way pydicom's reader would read it."""
        if vr is None:  # implicit VR: a sequence by the dictionary, or by its first item
            try:
                is_sequence = dictionary_VR(tag) == "SQ"
            except KeyError:
                is_sequence = self._header(pos, end)[0] == _ITEM
            if not is_sequence:
                raise _NotCertain
            return self.items(pos, end)
        if vr == b"SQ":
            return self.items(pos, end)
        if vr in (b"OB", b"OW") and tag == _PIXEL_DATA:
            return self.fragments(pos, end)
        raise _NotCertain

    def _header(self, pos: int, end: int) -> tuple[int, int, int]:
        """The tag and length of the item or delimiter at ``pos``; the position after them."""
        if pos + 8 > end:
            raise _NotCertain
        group, elem, length = _TAG_LENGTH(self.buf, pos)
        return int(group) << 16 | int(elem), int(length), pos + 8

    def items(self, pos: int, end: int) -> int:
        """An undefined-length sequence's items, up to and after its delimiter."""
        while True:
            tag, length, pos = self._header(pos, end)
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise _NotCertain
            if length == _UNDEFINED:
                pos = self.elements(pos, end, top=False, item=True)
            else:
                stop = pos + length
                if stop > end:
                    raise _NotCertain
                pos = self.elements(pos, stop, top=False, item=False)

    def fragments(self, pos: int, end: int) -> int:
        """Encapsulated pixel data: items of defined length up to the sequence delimiter
        (pydicom's ``_try_read_encapsulated_pixel_data``, which also reads it so)."""
        while True:
            tag, length, pos = self._header(pos, end)
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM or length == _UNDEFINED or pos + length > end:
                raise _NotCertain
            pos += length


def scan(data: bytes, *, implicit_vr: bool, wanted: Collection[int]) -> dict[int, bytes] | None:
    """The raw values of the ``wanted`` top-level tags of a Little Endian dataset.

    ``None`` when the dataset is empty or leaves the common case (module doc);
    a wanted tag that is absent is absent from the result.
    """
    if not data:
        return None
    walk = _Walk(memoryview(data), implicit_vr, wanted)
    try:
        walk.elements(0, len(data), top=True, item=False)
    except (_NotCertain, RecursionError):
        return None
    return walk.found
