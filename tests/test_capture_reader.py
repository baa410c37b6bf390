"""vxinspect's capture reader, byte by byte: every file here is built by hand with struct
from the formats' specifications (libpcap's savefile format and its LT_FCS_LENGTH bits;
draft-ietf-opsawg-pcapng: SHB, IDB and its if_fcslen option, EPB, SPB, the obsolete PB),
never with the reader under test. Each test reads the records back through
vxinspect.capture.batches and compares the frames, original lengths and link types, or the
one-line error (what was wrong, at which byte offset) with values worked out by hand.
"""
from __future__ import annotations

import io
import pickle
import struct

import pytest

from vxinspect.capture import CaptureError, batches

MIB = 1 << 20
MAX_RECORD = 1 << 26   # the documented bound on one record / block: 64 MiB

# Link types from the tcpdump.org registry (LINKTYPE_*), as a capture file carries them.
ETHERNET, RAW, SLL, IPV4, IPV6, SLL2 = 1, 101, 113, 228, 229, 276

# ---- builders: classic pcap ---------------------------------------------------------------

PCAP_MAGIC_US, PCAP_MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D
LT_FCS_LENGTH_PRESENT = 0x04000000


def pcap(frames, network=ETHERNET, *, e="<", magic=PCAP_MAGIC_US, origs=None):
    """A classic pcap file: 24-byte file header, then a 16-byte header per record."""
    out = bytearray(struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 262144, network))
    for i, f in enumerate(frames):
        orig = origs[i] if origs else len(f)
        out += struct.pack(e + "IIII", 1700000000 + i, 999999 * (i & 1), len(f), orig) + f
    return bytes(out)


# ---- builders: pcapng ---------------------------------------------------------------------

def block(btype, body, e="<"):
    body = body + b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def shb(e="<"):
    return block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), e)


def option(code, value, e="<"):
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def end_of_options(e="<"):
    return struct.pack(e + "HH", 0, 0)


def idb(linktype, snaplen=0, options=b"", e="<"):
    return block(1, struct.pack(e + "HHI", linktype, 0, snaplen) + options, e)


def epb(ifid, frame, orig=None, e="<"):
    ts = 1700000000_123456789
    return block(6, struct.pack(e + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, len(frame),
                                len(frame) if orig is None else orig) + frame, e)


def pb(ifid, frame, orig=None, e="<"):
    """The obsolete Packet Block (type 2): a 16-bit interface id and a 16-bit drops count."""
    return block(2, struct.pack(e + "HHIIII", ifid, 0, 0, 0, len(frame),
                                len(frame) if orig is None else orig) + frame, e)


def spb(frame, orig=None, e="<"):
    return block(3, struct.pack(e + "I", len(frame) if orig is None else orig) + frame, e)


# ---- reading ------------------------------------------------------------------------------

def read(data: bytes):
    """Every record of `data` as (frame bytes, original length, link type), and the
    CaptureError that stopped the reading (None at a clean end of file)."""
    out = []
    try:
        for buf, records in batches(io.BytesIO(data)):
            out += [(bytes(buf[a:b]), orig, lt) for a, b, orig, lt in records]
    except CaptureError as e:
        return out, e
    return out, None


def read_all(data: bytes):
    records, error = read(data)
    assert error is None, str(error)
    return records


def read_error(data: bytes):
    records, error = read(data)
    assert error is not None, "the reader accepted a corrupt capture"
    return records, error


PATTERN = bytes((i * 7 + 1) & 0xFF for i in range(251))   # a prime period


def frame(n: int, seed: int = 0) -> bytes:
    """n bytes that differ from any other frame's (so a frame read from the wrong place,
    or cut at the wrong length, cannot compare equal)."""
    start = (seed * 37) % 251
    return (PATTERN * (n // 251 + 2))[start:start + n]


FRAMES = [frame(n, k) for k, n in enumerate((60, 1, 61, 62, 63, 1514))]


# ==== classic pcap =========================================================================

@pytest.mark.parametrize("e,magic", [("<", PCAP_MAGIC_US), (">", PCAP_MAGIC_US),
                                     ("<", PCAP_MAGIC_NS), (">", PCAP_MAGIC_NS)],
                         ids=["le-us", "be-us", "le-ns", "be-ns"])
def test_pcap_frames_and_lengths_in_both_byte_orders_and_timestamp_units(e, magic):
    origs = [len(f) + k for k, f in enumerate(FRAMES)]     # the first is whole, the rest cut
    data = pcap(FRAMES, e=e, magic=magic, origs=origs)
    assert read_all(data) == [(f, o, ETHERNET) for f, o in zip(FRAMES, origs)]


@pytest.mark.parametrize("linktype", [ETHERNET, RAW, SLL, IPV4, IPV6, SLL2])
def test_pcap_supported_link_types_are_handed_on(linktype):
    assert read_all(pcap(FRAMES[:2], linktype)) == [(f, len(f), linktype) for f in FRAMES[:2]]


def test_pcap_link_type_is_the_low_16_bits_of_the_network_field():
    # libpcap's LT_LINKTYPE(x) is x & 0xFFFF; bits 16-25 are reserved/class bits
    data = pcap(FRAMES[:1], 0x00FF0000 | SLL2)
    assert read_all(data) == [(FRAMES[0], len(FRAMES[0]), SLL2)]


def test_pcap_empty_capture_has_no_records():
    assert read_all(pcap([])) == []


@pytest.mark.parametrize("network,e", [(147, "<"), (147, ">"), (0x00010000, "<")])
def test_pcap_unknown_link_type_names_it_and_the_supported_ones(network, e):
    records, err = read_error(pcap(FRAMES[:1], network, e=e))
    assert records == []
    lt = network & 0xFFFF
    assert str(err) == (f"unknown link type {lt} (supported: 1 (Ethernet), 101 (raw IP), "
                        "113 (Linux cooked (SLL)), 276 (Linux cooked v2 (SLL2)), "
                        "228 (raw IPv4), 229 (raw IPv6)) at byte offset 20")
    assert err.offset == 20        # the network field of the file header


@pytest.mark.parametrize("words,fcs_bytes", [(1, 2), (2, 4), (15, 30)])
@pytest.mark.parametrize("e", ["<", ">"])
def test_pcap_fcs_length_bits_strip_the_fcs(words, fcs_bytes, e):
    # LT_FCS_LENGTH_PRESENT (0x04000000) says bits 28-31 hold the FCS length in 16-bit words
    network = ETHERNET | LT_FCS_LENGTH_PRESENT | words << 28
    with_fcs = [f + b"\xfc" * fcs_bytes for f in FRAMES[:3]]
    got = read_all(pcap(with_fcs, network, e=e))
    assert got == [(f, len(f) + fcs_bytes, ETHERNET) for f in FRAMES[:3]]


def test_pcap_fcs_length_without_its_present_bit_is_ignored():
    data = pcap(FRAMES[:2], ETHERNET | 2 << 28)
    assert read_all(data) == [(f, len(f), ETHERNET) for f in FRAMES[:2]]


def test_pcap_record_shorter_than_its_fcs_is_kept_whole_and_one_of_exactly_fcs_is_empty():
    network = ETHERNET | LT_FCS_LENGTH_PRESENT | 2 << 28       # 4 FCS bytes
    got = read_all(pcap([b"abc", b"abcd", b"abcde"], network))
    assert got == [(b"abc", 3, 1), (b"", 4, 1), (b"a", 5, 1)]


@pytest.mark.parametrize("size", [0, 1, 3])
def test_too_short_for_a_magic_number(size):
    records, err = read_error(b"\xd4\xc3\xb2"[:size])
    assert records == []
    assert str(err) == (f"not a capture: file has {size} bytes, too short for a magic number "
                        "at byte offset 0")


def test_unknown_magic_is_named_in_hex():
    records, err = read_error(b"this is text, not a capture\n")
    assert str(err) == "not a pcap or pcapng file (magic 74686973) at byte offset 0"


@pytest.mark.parametrize("cut", [4, 5, 20, 23])
def test_pcap_file_header_cut_short(cut):
    records, err = read_error(pcap(FRAMES[:1])[:cut])
    assert str(err) == f"pcap file header cut short ({cut} of 24 bytes) at byte offset 0"


def test_pcap_header_alone_is_a_valid_empty_capture():
    assert read_all(pcap(FRAMES[:1])[:24]) == []


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcap_file_ending_inside_a_record_header(e):
    data = pcap(FRAMES[:2], e=e)
    second = 24 + 16 + len(FRAMES[0])
    records, err = read_error(data[:second + 15])
    assert records == [(FRAMES[0], 60, ETHERNET)]        # what came before is handed out
    assert str(err) == (f"file ends inside a record (it needs 16 bytes, 15 remain) "
                        f"at byte offset {second}")
    assert err.offset == second


def test_pcap_file_ending_inside_a_record_names_the_bytes_it_needs():
    data = pcap(FRAMES[:3])
    third = 24 + 16 + 60 + 16 + 1
    records, err = read_error(data[:third + 16 + 60])        # one byte short of 61
    assert [r[0] for r in records] == FRAMES[:2]
    assert str(err) == (f"file ends inside a record (it needs 77 bytes, 76 remain) "
                        f"at byte offset {third}")


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcap_implausible_record_length_after_the_good_records(e):
    good = pcap(FRAMES[:2], e=e)
    bad = struct.pack(e + "IIII", 1, 0, MAX_RECORD + 1, MAX_RECORD + 1) + b"x" * 64
    records, err = read_error(good + bad)
    assert [r[0] for r in records] == FRAMES[:2]
    assert str(err) == f"implausible record length {MAX_RECORD + 1} at byte offset {len(good) + 8}"


def test_pcap_record_of_the_largest_plausible_length_is_only_cut_short():
    # exactly 64 MiB is allowed: reading goes on until the file ends inside it
    good = pcap(FRAMES[:1])
    bad = struct.pack("<IIII", 1, 0, MAX_RECORD, MAX_RECORD) + b"x" * 64
    records, err = read_error(good + bad)
    assert [r[0] for r in records] == FRAMES[:1]
    assert str(err) == (f"file ends inside a record (it needs {MAX_RECORD + 16} bytes, 80 remain)"
                        f" at byte offset {len(good)}")


def big_frames(total: int):
    """Frames of assorted sizes adding up to more than `total` bytes."""
    out, size, k = [], 0, 0
    while size < total:
        f = frame(1 + (k * 997) % 9000, k)
        out.append(f)
        size += len(f) + 16
        k += 1
    return out


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcap_larger_than_the_read_buffer_with_a_record_larger_than_it(e):
    # the reader refills a 4 MiB buffer: records straddle its end, and one over 4 MiB
    # (BIG TCP and jumbograms make large records legitimate) must grow it
    frames = big_frames(4 * MIB + 4096)
    frames.insert(len(frames) // 2, frame(4 * MIB + 3, 99))
    got = read_all(pcap(frames, e=e, magic=PCAP_MAGIC_NS))
    assert len(got) == len(frames)
    assert [r[0] for r in got] == frames


def test_pcap_fault_after_the_read_buffer_names_its_offset_in_the_file():
    frames = big_frames(4 * MIB + 4096)
    data = pcap(frames)
    records, err = read_error(data[:-1])
    assert [r[0] for r in records] == frames[:-1]
    last = len(data) - 16 - len(frames[-1])
    assert err.offset == last
    assert str(err).endswith(f"(it needs {16 + len(frames[-1])} bytes, "
                             f"{16 + len(frames[-1]) - 1} remain) at byte offset {last}")


# ==== pcapng ===============================================================================

@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_enhanced_packet_blocks_on_two_interfaces(e):
    data = shb(e) + idb(ETHERNET, e=e) + idb(RAW, 65535, e=e)
    want = []
    for k, f in enumerate(FRAMES):
        ifid, orig = k & 1, len(f) + 3 * k
        data += epb(ifid, f, orig, e)
        want.append((f, orig, (ETHERNET, RAW)[ifid]))
    assert read_all(data) == want


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_obsolete_packet_block(e):
    data = shb(e) + idb(SLL, e=e) + idb(SLL2, e=e) + pb(1, FRAMES[2], 99, e) + pb(0, FRAMES[1], e=e)
    assert read_all(data) == [(FRAMES[2], 99, SLL2), (FRAMES[1], 1, SLL)]


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_simple_packet_blocks_are_on_interface_zero(e):
    data = shb(e) + idb(IPV4, e=e) + idb(IPV6, e=e) + b"".join(spb(f, e=e) for f in FRAMES)
    # the padding after a frame of 1, 61, 62 or 63 bytes is not part of it
    assert read_all(data) == [(f, len(f), IPV4) for f in FRAMES]


def test_pcapng_simple_packet_block_is_cut_to_the_interface_snaplen():
    f = frame(20)
    data = shb() + idb(ETHERNET, snaplen=8) + spb(f[:8], orig=20) + spb(f[:6], orig=6)
    assert read_all(data) == [(f[:8], 20, ETHERNET), (f[:6], 6, ETHERNET)]


def test_pcapng_simple_packet_block_without_snaplen_holds_what_the_block_holds():
    # snaplen 0 is "no limit": the frame is the original length or the block's data,
    # whichever is shorter
    f = frame(12)
    data = shb() + idb(ETHERNET, snaplen=0) + spb(f, orig=100) + spb(f[:5], orig=5)
    assert read_all(data) == [(f, 100, ETHERNET), (f[:5], 5, ETHERNET)]


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_if_fcslen_strips_the_fcs_of_its_interface_only(e):
    fcs4 = option(13, b"\x04", e)
    named = option(2, b"eth0\0", e)            # if_name: 5 bytes, padded to 8
    tsresol = option(9, b"\x09", e)            # if_tsresol: nanoseconds
    data = (shb(e) + idb(ETHERNET, options=named + tsresol + fcs4 + end_of_options(e), e=e)
            + idb(ETHERNET, options=named + end_of_options(e), e=e))
    want = []
    for k, f in enumerate(FRAMES[:4]):
        data += epb(0, f + b"\xfc\xfd\xfe\xff", e=e) + epb(1, f, e=e)
        want += [(f, len(f) + 4, ETHERNET), (f, len(f), ETHERNET)]
    data += spb(FRAMES[4] + b"\xfc\xfd\xfe\xff", e=e)
    want.append((FRAMES[4], len(FRAMES[4]) + 4, ETHERNET))
    assert read_all(data) == want


def test_pcapng_if_fcslen_as_the_first_and_last_option():
    data = shb() + idb(ETHERNET, options=option(13, b"\x02")) + epb(0, b"abcdef")
    assert read_all(data) == [(b"abcd", 6, ETHERNET)]


def test_pcapng_record_shorter_than_the_fcs_is_kept_whole():
    data = (shb() + idb(ETHERNET, options=option(13, b"\x04") + end_of_options())
            + epb(0, b"abc") + epb(0, b"abcd") + spb(b"ab") + spb(b"abcd"))
    assert read_all(data) == [(b"abc", 3, 1), (b"", 4, 1), (b"ab", 2, 1), (b"", 4, 1)]


@pytest.mark.parametrize("options", [
    end_of_options() + option(13, b"\x04"),      # after opt_endofopt nothing counts
    option(13, b""),                             # no value
    option(12, b"\x04"),                         # another option's value
    option(2, b"\x0d\x00\x01\x00\x04"),          # the bytes of an if_fcslen inside if_name
], ids=["after-end", "empty", "other-code", "inside-another-option"])
def test_pcapng_no_if_fcslen_means_no_fcs(options):
    data = shb() + idb(ETHERNET, options=options) + epb(0, b"abcdefgh")
    assert read_all(data) == [(b"abcdefgh", 8, ETHERNET)]


def test_pcapng_unknown_blocks_are_skipped():
    data = (shb() + block(4, end_of_options()) + idb(ETHERNET) + block(0x0BAD, b"junk")
            + epb(0, FRAMES[0]) + block(5, struct.pack("<III", 0, 0, 0))
            + block(0x40000BAD, b"custom") + block(0x0A, b"") + spb(FRAMES[1]))
    assert read_all(data) == [(FRAMES[0], 60, 1), (FRAMES[1], 1, 1)]


def test_pcapng_new_section_forgets_the_interfaces_and_may_change_byte_order():
    first = shb("<") + idb(ETHERNET) + idb(RAW) + epb(1, FRAMES[0])
    second = shb(">") + idb(SLL2, e=">") + epb(0, FRAMES[1], e=">")
    assert read_all(first + second) == [(FRAMES[0], 60, RAW), (FRAMES[1], 1, SLL2)]
    # interface 1 was the first section's: in the second only interface 0 exists
    records, err = read_error(first + second + epb(1, FRAMES[2], e=">"))
    assert len(records) == 2
    off = len(first + second)
    assert str(err) == ("packet block names interface 1, but only 1 are defined "
                        f"at byte offset {off + 8}")


def test_pcapng_section_header_alone_is_a_valid_empty_capture():
    assert read_all(shb()) == [] and read_all(shb(">") + idb(RAW, e=">")) == []


def test_pcapng_bad_byte_order_magic():
    data = bytearray(shb() + idb(ETHERNET))
    data[8:12] = b"\x01\x02\x03\x04"
    records, err = read_error(bytes(data))
    assert str(err) == "pcapng section header with bad byte-order magic 01020304 at byte offset 8"


def test_pcapng_bad_byte_order_magic_in_a_later_section():
    first = shb() + idb(ETHERNET) + epb(0, FRAMES[0])
    second = bytearray(shb(">"))
    second[8:12] = b"\x4d\x3c\x2b\x1b"
    records, err = read_error(first + bytes(second))
    assert records == [(FRAMES[0], 60, ETHERNET)]
    assert str(err) == ("pcapng section header with bad byte-order magic 4d3c2b1b "
                        f"at byte offset {len(first) + 8}")


@pytest.mark.parametrize("blen", [0, 8, 11, 13, 14, 15, 30, MAX_RECORD + 4, 0xFFFFFFFC])
@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_bad_total_length(blen, e):
    head = shb(e) + idb(ETHERNET, e=e) + epb(0, FRAMES[0], e=e)
    bad = struct.pack(e + "II", 6, blen) + b"\0" * 64
    records, err = read_error(head + bad)
    assert records == [(FRAMES[0], 60, ETHERNET)]
    assert str(err) == (f"pcapng block of type 0x6 has bad total length {blen} "
                        f"at byte offset {len(head) + 4}")


def test_pcapng_smallest_block_is_twelve_bytes():
    data = shb() + idb(ETHERNET) + struct.pack("<III", 0x0BAD, 12, 12) + epb(0, FRAMES[3])
    assert read_all(data) == [(FRAMES[3], 62, ETHERNET)]


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_trailing_length_must_match(e):
    head = shb(e) + idb(ETHERNET, e=e)
    bad = bytearray(epb(0, FRAMES[0], e=e))
    bad[-4:] = struct.pack(e + "I", len(bad) + 4)
    records, err = read_error(head + bytes(bad))
    assert str(err) == (f"pcapng block of type 0x6: trailing length {len(bad) + 4} != leading "
                        f"{len(bad)} at byte offset {len(head) + len(bad) - 4}")


def test_pcapng_packet_block_too_short():
    head = shb() + idb(ETHERNET)
    records, err = read_error(head + block(6, b"\0" * 16))         # 28 bytes: no caplen/orig
    assert str(err) == f"pcapng packet block too short (28 bytes) at byte offset {len(head)}"
    records, err = read_error(head + block(2, b"\0" * 16))
    assert str(err) == f"pcapng packet block too short (28 bytes) at byte offset {len(head)}"


def test_pcapng_empty_packet_block_is_32_bytes():
    data = shb() + idb(RAW) + epb(0, b"", orig=1500) + pb(0, b"")
    assert read_all(data) == [(b"", 1500, RAW), (b"", 0, RAW)]


@pytest.mark.parametrize("maker", [epb, pb], ids=["epb", "pb"])
def test_pcapng_packet_block_naming_an_undefined_interface(maker):
    head = shb() + idb(ETHERNET) + maker(0, FRAMES[0])
    records, err = read_error(head + maker(1, FRAMES[1]))
    assert records == [(FRAMES[0], 60, ETHERNET)]
    assert str(err) == ("packet block names interface 1, but only 1 are defined "
                        f"at byte offset {len(head) + 8}")


def test_pcapng_packet_block_before_any_interface():
    records, err = read_error(shb() + epb(0, FRAMES[0]))
    assert str(err) == "packet block names interface 0, but only 0 are defined at byte offset 36"


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_captured_length_running_past_its_block(e):
    head = shb(e) + idb(ETHERNET, e=e)
    good = epb(0, b"12345678", e=e)           # 28 + 8 + 4 = 40 bytes, the data fills it
    assert read_all(head + good) == [(b"12345678", 8, ETHERNET)]
    bad = bytearray(good)
    bad[20:24] = struct.pack(e + "I", 9)
    records, err = read_error(head + bytes(bad))
    assert str(err) == ("packet block captured length 9 runs past its block (40 bytes) "
                        f"at byte offset {len(head) + 20}")


def test_pcapng_simple_packet_block_before_any_interface():
    records, err = read_error(shb() + spb(FRAMES[0]))
    assert str(err) == "simple packet block before any interface at byte offset 28"


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_interface_description_block_too_short(e):
    records, err = read_error(shb(e) + block(1, struct.pack(e + "HH", 1, 0), e))
    assert str(err) == "interface description block too short (16 bytes) at byte offset 28"


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_interface_with_an_unknown_link_type(e):
    head = shb(e) + idb(ETHERNET, e=e) + epb(0, FRAMES[0], e=e)
    records, err = read_error(head + idb(147, e=e) + epb(1, FRAMES[1], e=e))
    assert records == [(FRAMES[0], 60, ETHERNET)]
    assert str(err).startswith("unknown link type 147 (supported: 1 (Ethernet), ")
    assert str(err).endswith(f") at byte offset {len(head) + 8}")


@pytest.mark.parametrize("cut", [1, 4, 7, 8, 20, 39])
def test_pcapng_file_ending_inside_a_block(cut):
    head = shb() + idb(ETHERNET) + epb(0, FRAMES[0])
    tail = epb(0, FRAMES[2])
    records, err = read_error(head + tail[:cut])
    assert records == [(FRAMES[0], 60, ETHERNET)]
    assert str(err) == (f"file ends inside a pcapng block ({cut} bytes left over) "
                        f"at byte offset {len(head)}")


def test_pcapng_file_ending_inside_its_section_header():
    records, err = read_error(shb()[:20])
    assert records == []
    assert str(err) == "file ends inside a pcapng block (20 bytes left over) at byte offset 0"


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_larger_than_the_read_buffer_with_a_block_larger_than_it(e):
    frames = big_frames(4 * MIB + 4096)
    # zeros: a reader that took the block length from anywhere but the block's own
    # header would find 0 there and never grow its buffer for it
    frames.insert(len(frames) // 3, bytes(4 * MIB + 1))
    data = shb(e) + idb(ETHERNET, e=e) + idb(RAW, e=e)
    data += b"".join(epb(k & 1, f, e=e) if k % 3 else spb(f, e=e) for k, f in enumerate(frames))
    got = read_all(data)
    assert [r[0] for r in got] == frames
    assert [r[2] for r in got] == [RAW if k % 3 and k & 1 else ETHERNET
                                   for k in range(len(frames))]


def test_pcapng_fault_after_the_read_buffer_names_its_offset_in_the_file():
    frames = big_frames(4 * MIB + 4096)
    data = shb() + idb(ETHERNET) + b"".join(epb(0, f) for f in frames)
    bad = bytearray(epb(0, b"abcd"))
    bad[-4:] = b"\0\0\0\0"
    records, err = read_error(data + bytes(bad))
    assert [r[0] for r in records] == frames
    assert err.offset == len(data) + len(bad) - 4


# ---- field widths: every length and id is unsigned (32 bits, the PB's id 16) --------------

def test_pcapng_block_may_end_the_file_at_the_smallest_size():
    data = shb() + idb(ETHERNET) + epb(0, FRAMES[0]) + struct.pack("<III", 0x0BAD, 12, 12)
    assert read_all(data) == [(FRAMES[0], 60, ETHERNET)]


def test_pcapng_block_of_the_largest_plausible_length_is_only_cut_short():
    head = shb() + idb(ETHERNET)
    records, err = read_error(head + struct.pack("<II", 6, MAX_RECORD) + b"\0" * 100)
    assert str(err) == f"file ends inside a pcapng block (108 bytes left over) at byte offset {len(head)}"


def test_pcapng_trailing_length_is_unsigned():
    head = shb() + idb(ETHERNET)
    bad = bytearray(epb(0, FRAMES[0]))
    bad[-4:] = struct.pack("<I", 0x80000000)
    records, err = read_error(head + bytes(bad))
    assert str(err).startswith(f"pcapng block of type 0x6: trailing length 2147483648 != leading "
                               f"{len(bad)} ")


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_interface_ids_and_lengths_are_unsigned(e):
    head = shb(e) + idb(ETHERNET, e=e)
    records, err = read_error(head + epb(0xFFFFFFFF, FRAMES[0], e=e))
    assert str(err).startswith("packet block names interface 4294967295, but only 1 are defined")
    records, err = read_error(head + pb(0xFFFF, FRAMES[0], e=e))
    assert str(err).startswith("packet block names interface 65535, but only 1 are defined")
    bad = bytearray(epb(0, b"12345678", e=e))
    bad[20:24] = struct.pack(e + "I", 0xFFFFFFFF)
    records, err = read_error(head + bytes(bad))
    assert str(err).startswith("packet block captured length 4294967295 runs past its block")
    # an original length above 2**31 is legal (pcapng's orig_len is 32 bits unsigned)
    assert read_all(head + epb(0, FRAMES[1], 0x80000000, e) + pb(0, FRAMES[1], 0xFFFFFFFF, e)) \
        == [(FRAMES[1], 0x80000000, ETHERNET), (FRAMES[1], 0xFFFFFFFF, ETHERNET)]
    # (a 60-byte frame: the SPB's data has no padding to tell from the frame)
    assert read_all(head + spb(FRAMES[0], 0x80000000, e)) == [(FRAMES[0], 0x80000000, ETHERNET)]


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_interface_link_type_and_snaplen_are_unsigned(e):
    records, err = read_error(shb(e) + idb(0xFFFF, e=e))
    assert str(err).startswith("unknown link type 65535 (supported: ")
    data = shb(e) + idb(ETHERNET, snaplen=0xFFFFFFFF, e=e) + spb(FRAMES[2], e=e)
    assert read_all(data) == [(FRAMES[2], 61, ETHERNET)]


def test_pcapng_simple_packet_block_data_past_the_snaplen_is_not_the_frame():
    f = frame(20)
    data = shb() + idb(ETHERNET, snaplen=8) + spb(f, orig=20)
    assert read_all(data) == [(f[:8], 20, ETHERNET)]


def test_pcapng_if_fcslen_running_past_its_block_is_not_believed():
    # option header: if_fcslen, length 8 -- but only 4 value bytes before the block ends
    opts = struct.pack("<HH", 13, 8) + b"\x04\0\0\0"
    data = shb() + idb(ETHERNET, options=opts) + epb(0, b"abcdefgh")
    assert read_all(data) == [(b"abcdefgh", 8, ETHERNET)]


def test_pcapng_if_fcslen_after_a_long_option():
    # an if_name of 32 KiB (lengths are 16 bits unsigned), then the FCS length
    opts = option(2, b"n" * 0x8001) + option(13, b"\x04") + end_of_options()
    data = shb() + idb(ETHERNET, options=opts) + epb(0, b"abcdefgh")
    assert read_all(data) == [(b"abcd", 8, ETHERNET)]


# ---- classic pcap: the last record and the cut after a record header ----------------------

@pytest.mark.parametrize("e", ["<", ">"])
def test_pcap_empty_record_may_end_the_file(e):
    data = pcap([FRAMES[0], b""], e=e, origs=[60, 1514])
    assert read_all(data) == [(FRAMES[0], 60, ETHERNET), (b"", 1514, ETHERNET)]


def test_pcap_file_cut_right_after_a_record_header_names_the_records_length():
    # the record header says 61 bytes captured (of 1000): 16 + 61 are needed, 16 remain
    data = pcap([FRAMES[0], FRAMES[2]], origs=[60, 1000])
    second = 24 + 16 + 60
    records, err = read_error(data[:second + 16])
    assert str(err) == (f"file ends inside a record (it needs 77 bytes, 16 remain) "
                        f"at byte offset {second}")


def test_capture_error_survives_a_copy_between_processes():
    records, err = read_error(pcap(FRAMES[:2])[:-1])
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.message, again.offset) == (str(err), err.message, err.offset)


def test_pcap_whose_last_read_brings_a_single_byte():
    # CHUNK + 1 bytes: the reader's second read of the file returns exactly one byte, the
    # last of the last record; that is no end of file yet
    chunk = 4 * MIB
    frames = [frame(1000, k) for k in range((chunk - 24) // 1016 - 1)]
    rest = chunk + 1 - 24 - 1016 * len(frames) - 16
    frames.append(frame(rest, 7))
    data = pcap(frames)
    assert len(data) == chunk + 1
    got = read_all(data)
    assert [r[0] for r in got] == frames
