"""The virtio-net header a TAP opened with IFF_VNET_HDR puts before every frame.

With offloads enabled on the TAP (TUNSETOFFLOAD), a read returns this 10-byte
header and then a frame of up to 64 KiB that the kernel did not segment
(TSO/USO: `gso_type`, `gso_size` = the payload bytes per segment, `hdr_len` =
the headers' length) or whose L4 checksum it left partial (`NEEDS_CSUM`: the
field at `csum_start + csum_offset` holds the pseudo-header sum, and the
checksum is the complement of the sum from `csum_start` to the end). A write
carries the same header: a coalesced super-frame for the kernel to take as
one (GRO), or an all-zero header for a plain frame.

Fields are in the host's byte order (little-endian here: the TAP's default
unless TUNSETVNETBE says otherwise), as in <linux/virtio_net.h>.
"""
from __future__ import annotations

import struct

HEADER = struct.Struct("<BBHHHH")   # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
LEN = HEADER.size                   # 10: struct virtio_net_hdr (no num_buffers)
ZERO = bytes(LEN)                   # a plain frame: nothing partial, nothing to segment

F_NEEDS_CSUM = 1      # VIRTIO_NET_HDR_F_NEEDS_CSUM
F_DATA_VALID = 2      # VIRTIO_NET_HDR_F_DATA_VALID

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3           # UFO: IP fragmentation of a UDP datagram; never enabled by us
GSO_TCPV6 = 4
GSO_UDP_L4 = 5        # USO: UDP segmentation (kernel 6.2+)
GSO_ECN = 0x80        # the flow uses ECN: CWR goes on the first segment only

# <linux/if_tun.h>
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0     # _IOW('T', 208, unsigned int)
TUNSETVNETHDRSZ = 0x400454D8   # _IOW('T', 216, int)
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
