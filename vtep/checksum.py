"""Internet checksum (RFC 1071) helpers, fast enough for per-packet use.

Python has no ones'-complement sum, but one is hiding in integer arithmetic:
2**16 == 1 (mod 0xFFFF), so a byte string read as one big-endian integer is
congruent to the sum of its 16-bit words modulo 0xFFFF, which is exactly the
ones'-complement sum with its end-around carry. `int.from_bytes` and one `%`
run in C and beat any per-word loop by two orders of magnitude.
"""
from __future__ import annotations

_from_bytes = int.from_bytes


def word_sum(data) -> int:
    """Ones'-complement sum of `data` as 16-bit big-endian words, reduced mod 0xFFFF.

    An odd trailing byte is padded with zero, as RFC 1071 says: times 256, which
    commutes with the modulo, so it is applied to the small reduced sum rather than
    to the big integer (the userspace data path sums every datagram it sends).
    """
    s = _from_bytes(data, "big") % 0xFFFF
    if len(data) & 1:
        s = (s << 8) % 0xFFFF
    return s


def checksum(data, initial: int = 0) -> int:
    """The checksum field value for `data` (whose own checksum field is zero).

    `initial` is a pre-summed pseudo-header (see `pseudo_header_sum`).
    """
    s = (word_sum(data) + initial) % 0xFFFF
    return 0xFFFF - s if s else 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Sum of the IPv4 or IPv6 pseudo-header (RFC 768, RFC 8200 section 8.1)."""
    return _from_bytes(src, "big") + _from_bytes(dst, "big") + proto + length


def verify(data, initial: int = 0) -> bool:
    """True when `data` (checksum field included) sums to zero, i.e. verifies."""
    return (word_sum(data) + initial) % 0xFFFF == 0
