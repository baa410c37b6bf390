"""Opening what the userspace path's offload loops need, and saying why not when the
kernel cannot give it.

The TAP: IFF_VNET_HDR, then TUNSETOFFLOAD with checksum, TSO4/6 (with ECN) and,
where the kernel has them (6.2+), USO4/6; each set is tried from the fullest
down. The send sockets: UDP sockets on kernel-chosen ports with DF set and
UDP_SEGMENT available (vtep.offload). The receive socket: UDP_GRO, which only
coalesces when the underlay device does GRO and the senders fill the outer UDP
checksum. Every refusal becomes one reason string; the caller logs it once and
runs the per-frame loops (vtep.datapath) instead.
"""
from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

from . import vnet
from .inet import IP_MTU_DISCOVER, IP_PMTUDISC_DO, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO
SOL_UDP = 17
UDP_SEGMENT = 103      # <linux/udp.h>: the cmsg/option carrying the segment size (u16)
UDP_GRO = 104          # receive: coalesced datagrams and their segment size (int)
GSO_MAX_BYTES = 65507  # what one UDP send may carry over IPv4 (65535 - 20 - 8)
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS on older kernels (128 since 6.x): one limit for all
POOL = 64              # send sockets, i.e. outer source ports flows spread over
SOCKET_BUFFER = 4 << 20
SO_ATTACH_FILTER = 26   # <asm-generic/socket.h>
_TSO = vnet.TUN_F_CSUM | vnet.TUN_F_TSO4 | vnet.TUN_F_TSO6 | vnet.TUN_F_TSO_ECN
OFFLOAD_SETS = (
    (_TSO | vnet.TUN_F_USO4 | vnet.TUN_F_USO6, "csum tso4 tso6 uso4 uso6"),
    (_TSO, "csum tso4 tso6"),
)


def drop_all_filter(sock: socket.socket) -> None:
    """Attach the one-instruction classic BPF program `ret #0`: receive nothing."""
    insn = (ctypes.c_ubyte * 8).from_buffer_copy(struct.pack("=HBBI", 0x06, 0, 0, 0))
    prog = struct.pack("HP", 1, ctypes.addressof(insn))  # struct sock_fprog, native layout
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)


def set_offloads(fd: int) -> str | None:
    """Turn on the fullest offload set the TAP takes; its names, or None (none taken)."""
    for flags, names in OFFLOAD_SETS:
        try:
            fcntl.ioctl(fd, vnet.TUNSETOFFLOAD, flags)
        except OSError:
            continue
        return names
    return None


def send_pool(local: str, n: int = POOL) -> list[socket.socket]:
    """n UDP sockets bound to `local` on ports the kernel picks (from its ephemeral range,
    as the kernel vxlan device picks source ports), DF set (RFC 7348 section 4.3), with
    UDP_SEGMENT available. OSError when the kernel lacks UDP GSO (ENOPROTOOPT)."""
    v6 = ":" in local
    pool: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
            pool.append(s)
            s.bind((local, 0))
            if v6:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
            else:
                s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            s.setsockopt(SOL_UDP, UDP_SEGMENT, 0)   # 0: no default size; proves it exists
            # nothing is ever sent to these ports: whatever is, the drop-all filter
            # keeps out of the receive queues
            drop_all_filter(s)
    except OSError:
        for s in pool:
            s.close()
        raise
    return pool


def set_gro(sock: socket.socket, on: bool) -> bool:
    """UDP_GRO on or off; whether it is on (False too where the kernel lacks it)."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, int(on))
    except OSError:
        return False
    return on
