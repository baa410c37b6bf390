"""Streaming capture readers: classic pcap and pcapng, recognised by magic number.

The file is read in chunks of CHUNK bytes; each chunk's complete records are
handed out as one batch, so memory stays flat whatever the file size. A batch
is ``(buf, records)`` where ``buf`` is a reused bytearray (valid until the next
batch) and each record is
``(start, end, orig_len, linktype)``: the captured frame is ``buf[start:end]``.

A fault in the file raises CaptureError, after every batch before it has been
handed out, so that what was read before the fault is still reported.

The file may be a pipe (`vxinspect -`, tcpdump's stdout): every read may come back
short, so nothing here assumes a read fills what it asked for, and nothing seeks.
When the caller passes a `stamps` list, each batch also refills it with the
capture time (seconds, float) of each record, in step with `records`; --interval
cuts batches at those times. Without it the loops pay one test per batch.
A `readers` list receives the Reader, whose `base` is the file offset of the
batch buffer's first byte while a batch is out (batchsum.Worker pread()s there).
"""
from __future__ import annotations

import struct

CHUNK = 1 << 22
MAX_RECORD = 1 << 26
"""64 MiB: larger than any real frame (BIG TCP tops out near 512 KiB); a larger
length is corruption, and refusing it keeps memory bounded."""

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
SUPPORTED_LINKTYPES = {
    LINKTYPE_ETHERNET: "Ethernet",
    LINKTYPE_RAW: "raw IP",
    LINKTYPE_LINUX_SLL: "Linux cooked (SLL)",
    LINKTYPE_LINUX_SLL2: "Linux cooked v2 (SLL2)",
    LINKTYPE_IPV4: "raw IPv4",
    LINKTYPE_IPV6: "raw IPv6",
}

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", False), b"\xa1\xb2\xc3\xd4": (">", False),
    b"\x4d\x3c\xb2\xa1": ("<", True), b"\xa1\xb2\x3c\x4d": (">", True),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"


class CaptureError(Exception):
    """The capture cannot be read (further) at byte `offset`."""

    def __init__(self, message: str, offset: int):
        # BaseException keeps (message, offset) as args by itself: a copy or an unpickled
        # CaptureError is built again from both
        self.message = message
        self.offset = offset

    def __str__(self) -> str:
        return f"{self.message} at byte offset {self.offset}"


def _check_linktype(linktype: int, offset: int) -> None:
    if linktype not in SUPPORTED_LINKTYPES:
        known = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_LINKTYPES.items())
        raise CaptureError(f"unknown link type {linktype} (supported: {known})", offset)


class Reader:
    """Refills one preallocated bytearray from a file with readinto (no per-chunk copies).

    `buf[:n]` holds valid bytes; `base` is the file offset of buf[0]. The buffer
    is reused: a batch is only valid until the next refill.
    """

    def __init__(self, f, head: bytes):
        self.f = f
        self.buf = bytearray(CHUNK)
        self.buf[:len(head)] = head
        self.n = len(head)
        self.base = 0

    def refill(self, keep_from: int, need: int = 0) -> bool:
        """Drop buf[:keep_from], then fill the buffer (at least `need` bytes from keep_from).

        Returns False at end of file.
        """
        keep = self.n - keep_from
        size = max(CHUNK, need)
        if len(self.buf) < size:
            old, self.buf = self.buf, bytearray(size)
            self.buf[:keep] = old[keep_from:self.n]
        elif keep:
            self.buf[:keep] = self.buf[keep_from:self.n]
        with memoryview(self.buf) as mv:
            got = self.f.readinto(mv[keep:])
        self.base += keep_from
        self.n = keep + got
        return got > 0


def batches(f, stamps: list | None = None, readers: list | None = None):
    """Yield (buf, records) batches from an open binary file or pipe, whatever its format.

    With `stamps`, the list holds each batch's record times (seconds) while it is out;
    `readers` gets the Reader appended (its `base` locates each batch in the file)."""
    head = b""
    while len(head) < 4:  # a pipe may hand the magic over in pieces
        more = f.read(4 - len(head))
        if not more:
            break
        head += more
    if len(head) < 4:
        raise CaptureError(f"not a capture: file has {len(head)} bytes, too short for a magic number", 0)
    r = Reader(f, head)
    if readers is not None:
        readers.append(r)
    if head in PCAP_MAGICS:
        yield from _pcap(r, *PCAP_MAGICS[head], stamps)
    elif head == PCAPNG_SHB:
        yield from _pcapng(r, stamps)
    else:
        raise CaptureError(f"not a pcap or pcapng file (magic {head.hex()})", 0)


def _pcap(r: Reader, order: str, nanos: bool, stamps: list | None = None):
    while r.n < 24 and r.refill(0, 24):
        pass
    if r.n < 24:
        raise CaptureError(f"pcap file header cut short ({r.n} of 24 bytes)", 0)
    (network,) = struct.unpack_from(order + "I", r.buf, 20)
    linktype = network & 0xFFFF
    _check_linktype(linktype, 20)
    # libpcap LT_FCS_LENGTH_PRESENT / LT_FCS_LENGTH: frames end in an FCS of
    # that many 16-bit words, which is no part of the packet.
    fcs = ((network >> 28) * 2) if network & 0x04000000 else 0
    rec = struct.Struct(order + "II").unpack_from  # incl_len, orig_len; also ts_sec, ts_frac
    unit = 1e-9 if nanos else 1e-6
    off = 24
    eof = False
    while True:
        buf = r.buf
        n = r.n
        records = []
        append = records.append
        fault = None
        while off + 16 <= n:
            incl, orig = rec(buf, off + 8)
            end = off + 16 + incl
            if end > n:
                if incl > MAX_RECORD:
                    fault = CaptureError(f"implausible record length {incl}", r.base + off + 8)
                break
            append((off + 16, end - fcs if incl >= fcs else end, orig, linktype))
            off = end
        if records:
            if stamps is not None:
                # every record's header sits just before its frame (start - 16)
                stamps[:] = [s + u * unit for s, u in (rec(buf, x[0] - 16) for x in records)]
            yield buf, records
        if fault is not None:
            raise fault
        need = 16 if off + 16 > n else 16 + rec(buf, off + 8)[0]
        if eof:
            # The pass after the refill that found the end: that refill kept only an
            # incomplete record, at buf[0] (off is 0), and added nothing to complete it.
            if n:
                raise CaptureError(f"file ends inside a record (it needs {need} bytes, "
                                   f"{n} remain)", r.base)
            return
        eof = not r.refill(off, need)
        off = 0


def _pcapng(r: Reader, stamps: list | None = None):
    """pcapng: SHB, IDB, EPB, SPB and the obsolete PB; every other block is skipped."""
    off = 0
    order = "<"
    # (linktype, snaplen, fcs bytes, seconds per timestamp unit) per interface of the
    # section; set by the SHB that every pcapng file starts with (batches checked its magic)
    interfaces: list[tuple[int, int, int, float]]
    stamp = 0.0  # the last packet's time: a Simple Packet Block has none of its own
    eof = not r.refill(0)
    while True:
        buf = r.buf
        n = r.n
        records = []
        append = records.append
        if stamps is not None:
            stamps.clear()
        fault = None
        while off + 12 <= n:
            btype_raw = buf[off:off + 4]
            if btype_raw == PCAPNG_SHB:
                bom = buf[off + 8:off + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    order = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    order = ">"
                else:
                    fault = CaptureError(f"pcapng section header with bad byte-order magic {bom.hex()}",
                                         r.base + off + 8)
                    break
                interfaces = []
            btype, blen = struct.unpack_from(order + "II", buf, off)
            if blen < 12 or blen % 4 or blen > MAX_RECORD:
                fault = CaptureError(f"pcapng block of type {btype:#x} has bad total length {blen}",
                                     r.base + off + 4)
                break
            end = off + blen
            if end > n:
                break
            (trailer,) = struct.unpack_from(order + "I", buf, end - 4)
            if trailer != blen:
                fault = CaptureError(
                    f"pcapng block of type {btype:#x}: trailing length {trailer} != leading {blen}",
                    r.base + end - 4)
                break
            if btype == 6 or btype == 2:  # Enhanced Packet Block / obsolete Packet Block
                if blen < 32:
                    fault = CaptureError(f"pcapng packet block too short ({blen} bytes)", r.base + off)
                    break
                if btype == 6:
                    ifid, _, _, caplen, orig = struct.unpack_from(order + "IIIII", buf, off + 8)
                else:
                    ifid, _, _, _, caplen, orig = struct.unpack_from(order + "HHIIII", buf, off + 8)
                if ifid >= len(interfaces):
                    fault = CaptureError(f"packet block names interface {ifid}, but only "
                                         f"{len(interfaces)} are defined", r.base + off + 8)
                    break
                if 28 + caplen > blen - 4:
                    fault = CaptureError(f"packet block captured length {caplen} runs past its "
                                         f"block ({blen} bytes)", r.base + off + 20)
                    break
                lt, _, fcs, unit = interfaces[ifid]
                start = off + 28
                if stamps is not None:
                    hi, lo = struct.unpack_from(order + "II", buf, off + 12)
                    stamp = ((hi << 32) | lo) * unit
                    stamps.append(stamp)
                append((start, start + caplen - (fcs if caplen >= fcs else 0), orig, lt))
            elif btype == 3:  # Simple Packet Block: interface 0, length from the block
                if not interfaces:
                    fault = CaptureError("simple packet block before any interface", r.base + off)
                    break
                (orig,) = struct.unpack_from(order + "I", buf, off + 8)
                lt, snap, fcs, _ = interfaces[0]
                caplen = min(orig, blen - 16, snap or orig)
                if stamps is not None:
                    stamps.append(stamp)
                start = off + 12
                append((start, start + caplen - (fcs if caplen >= fcs else 0), orig, lt))
            elif btype == 1:  # Interface Description Block
                if blen < 20:
                    fault = CaptureError(f"interface description block too short ({blen} bytes)",
                                         r.base + off)
                    break
                lt, _, snap = struct.unpack_from(order + "HHI", buf, off + 8)
                try:
                    _check_linktype(lt, r.base + off + 8)
                except CaptureError as e:
                    fault = e
                    break
                interfaces.append((lt, snap, *_if_options(buf, off + 16, end - 4, order)))
            off = end
        if records:
            yield buf, records
        if fault is not None:
            raise fault
        if eof:
            # as in _pcap: only an incomplete block is left, at buf[0]
            if n:
                raise CaptureError(f"file ends inside a pcapng block ({n} bytes left over)",
                                   r.base)
            return
        need = 0
        if off + 8 <= n:
            need = min(struct.unpack_from(order + "I", buf, off + 4)[0], MAX_RECORD)
        eof = not r.refill(off, need)
        off = 0


def _if_options(buf, pos: int, end: int, order: str) -> tuple[int, float]:
    """(if_fcslen, seconds per timestamp unit) of an IDB: if_fcslen (code 13) is the FCS
    bytes at the end of each frame (default 0), if_tsresol (code 9) the timestamp
    resolution (default microseconds; high bit set: a power of 2, else of 10).

    Options end at opt_endofopt (code 0) or at `end`; an option whose value would run
    past `end` is malformed, and it and what follows are not believed."""
    fcs, unit = 0, 1e-6
    while pos + 4 <= end:
        code, length = struct.unpack_from(order + "HH", buf, pos)
        nxt = pos + 4 + length + (-length % 4)
        if code == 0 or nxt > end:
            break
        if code == 13 and length:
            fcs = buf[pos + 4]
        elif code == 9 and length:
            v = buf[pos + 4]
            unit = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
        pos = nxt
    return fcs, unit
