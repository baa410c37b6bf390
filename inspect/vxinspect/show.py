"""--show N: one packet's full layered dissection by scapy, plus its own checks.

Scapy is far too slow for the whole file, but it is the reference dissector
for one packet; it is imported here only, on demand.
"""
from __future__ import annotations

from .analyze import Options, read_packet
from .capture import (LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL,
                      LINKTYPE_LINUX_SLL2)
from .decode import make_decoder
from .report import Tally


class NoSuchPacket(Exception):
    pass


def dissect(path, number: int, opts: Options) -> str:
    found = read_packet(path, number)
    if found is None:
        raise NoSuchPacket(f"no packet {number} in the capture")
    lt, frame, orig = found

    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Ether
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import bind_layers

    for port in opts.ports:
        bind_layers(UDP, VXLAN, dport=port)
    if lt == LINKTYPE_ETHERNET:
        pkt = Ether(frame)
    elif lt == LINKTYPE_LINUX_SLL:
        pkt = CookedLinux(frame)
    elif lt == LINKTYPE_LINUX_SLL2:
        pkt = CookedLinuxV2(frame)
    elif lt == LINKTYPE_IPV6 or (lt != LINKTYPE_IPV4 and frame[:1] and frame[0] >> 4 == 6):
        pkt = IPv6(frame)
    else:
        pkt = IP(frame)

    tally = Tally()
    make_decoder(opts, tally)(frame, [(0, len(frame), orig, lt)], 0)
    fired = [cid for cid, h in tally.hits.items() if h[0]]
    head = (f"packet {number}: {len(frame)} bytes captured, {orig} on the wire\n"
            f"checks on this packet alone: {', '.join(fired) or 'none'}"
            " (mac-move and fragment matching need the whole capture)\n")
    return head + pkt.show(dump=True)
