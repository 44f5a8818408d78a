"""A small standard-library reader for R's lazy-load databases (``Rdata.rdx`` / ``Rdata.rdb``).

Enough of R's serialization format (XDR, versions 2 and 3) for the plain data such packages ship:
character, integer, double and logical vectors, lists and pairlists with names, symbols and
references. The ``.rdx`` index is a gzip- or zlib-compressed serialized list whose ``variables``
entry maps each object name to ``(offset, length)`` in the ``.rdb``; each ``.rdb`` block is a 4-byte
big-endian uncompressed size then a zlib stream (R's "type 1" compression) of a serialized object.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Any

NILVALUE, GLOBALENV, UNBOUNDVALUE, MISSINGARG, BASENAMESPACE = 254, 253, 252, 251, 250
NAMESPACE, PACKAGE, PERSIST, EMPTYENV, BASEENV, REF = 249, 248, 247, 242, 241, 255
SYM, LIST, CLO, ENV, PROM, LANG, CHAR, LGL, INT, REAL, STR, VEC, ATTRLANG, ATTRLIST = 1, 2, 3, 4, 5, 6, 9, 10, 13, 14, 16, 19, 240, 239
NA_INT = -(2**31)


class RVector(list):
    """A list with R attributes (``names`` and others)."""

    def __init__(self, items, attributes=None):
        super().__init__(items)
        self.attributes = attributes or {}

    @property
    def names(self):
        return self.attributes.get("names")

    def as_dict(self) -> dict:
        return dict(zip(self.names, self))


class RSymbol(str):
    pass


class _Reader:
    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise ValueError(f"not an R XDR serialization (header {data[:2]!r})")
        self.buf, self.pos, self.refs = data, 2, []
        version = self.int()
        self.int(), self.int()  # writer and minimal reader R versions
        if version == 3:
            n = self.int()  # native encoding name
            self.pos += n
        elif version != 2:
            raise ValueError(f"unsupported R serialization version {version}")

    def int(self) -> int:
        (v,) = struct.unpack_from(">i", self.buf, self.pos)
        self.pos += 4
        return v

    def item(self) -> Any:
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind in (NILVALUE, GLOBALENV, UNBOUNDVALUE, MISSINGARG, BASENAMESPACE, EMPTYENV, BASEENV):
            return None
        if kind == REF:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind in (NAMESPACE, PACKAGE, PERSIST):
            self.int()  # always 0
            n = self.int()
            value = [self.item() for _ in range(n)]
            self.refs.append(value)
            return value
        if kind == SYM:
            value = RSymbol(self.item())
            self.refs.append(value)
            return value
        if kind == CHAR:
            n = self.int()
            if n == -1:
                return None
            s = self.buf[self.pos:self.pos + n].decode("utf-8", errors="replace")
            self.pos += n
            return s
        if kind in (LIST, LANG, CLO, PROM, ATTRLANG, ATTRLIST):
            return self.pairlist(has_attr, has_tag)
        if kind in (LGL, INT):
            n = self.int()
            vals = struct.unpack_from(f">{n}i", self.buf, self.pos)
            self.pos += 4 * n
            return self.with_attr(RVector([None if v == NA_INT else v for v in vals]), has_attr)
        if kind == REAL:
            n = self.int()
            vals = struct.unpack_from(f">{n}d", self.buf, self.pos)
            self.pos += 8 * n
            return self.with_attr(RVector(vals), has_attr)
        if kind in (STR, VEC):
            n = self.int()
            return self.with_attr(RVector([self.item() for _ in range(n)]), has_attr)
        raise ValueError(f"unsupported R object type {kind} at byte {self.pos - 4}")

    def pairlist(self, has_attr: bool, has_tag: bool) -> RVector:
        items, names = [], []
        attrs = self.item() if has_attr else None
        while True:
            names.append(str(self.item()) if has_tag else None)
            items.append(self.item())
            flags = self.int()
            kind = flags & 0xFF
            if kind == NILVALUE:
                break
            if kind not in (LIST, LANG, ATTRLIST, ATTRLANG):  # the cdr is something else: read it and stop
                self.pos -= 4
                items.append(self.item())
                names.append(None)
                break
            has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
            if has_attr:
                self.item()
        vec = RVector(items, {"names": names} if any(names) else {})
        if isinstance(attrs, RVector) and attrs.names:
            vec.attributes.update(attrs.as_dict())
        return vec

    def with_attr(self, vec: RVector, has_attr: bool) -> RVector:
        if has_attr:
            attrs = self.item()
            vec.attributes = attrs.as_dict() if isinstance(attrs, RVector) else {}
        return vec


def unserialize(data: bytes) -> Any:
    """Decode one R XDR serialization."""
    return _Reader(data).item()


def _decompress_file(raw: bytes) -> bytes:
    if raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    return zlib.decompress(raw[4:])


def read_lazyload_db(base: str | Path) -> dict[str, Any]:
    """Read every object of an R lazy-load database ``base.rdx`` + ``base.rdb`` into Python values."""
    base = Path(base)
    index = unserialize(_decompress_file(base.with_suffix(".rdx").read_bytes())).as_dict()
    variables = index["variables"].as_dict()
    blob = base.with_suffix(".rdb").read_bytes()
    out = {}
    for name, (offset, length) in variables.items():
        block = blob[offset:offset + length]
        out[name] = unserialize(zlib.decompress(block[4:]))
    return out
