"""inspect_file: stream a capture through the decoder and build its Report."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vtep import wire

from .capture import CaptureError, batches
from .decode import make_decoder
from .report import Report, Tally

if TYPE_CHECKING:
    from vtep.plan import Plan


@dataclass(frozen=True)
class Options:
    vnis: frozenset[int] = frozenset({wire.DEFAULT_VNI})
    ports: frozenset[int] = field(default_factory=lambda: wire.VXLAN_PORTS)
    underlay_mtu: int = 1500
    mtu: int | None = None  # overlay MTU; default underlay MTU - 50 (IPv4) / - 70 (IPv6)
    checksums: bool = True
    # The cluster plan to hold each packet against (plan-mismatch). Its port is
    # always a VXLAN port; `vnis` is left as given (the CLI's --vni, else the
    # plan's VNI, is the caller's choice).
    plan: Plan | None = None

    def __post_init__(self):
        if self.plan is not None and self.plan.port not in self.ports:
            object.__setattr__(self, "ports", frozenset(self.ports | {self.plan.port}))


def inspect_file(path, opts: Options | None = None) -> Report:
    """Read the whole capture; a read fault ends the report early (Report.error), never raises."""
    opts = opts or Options()
    tally = Tally()
    decode_batch = make_decoder(opts, tally)
    packets = vxlan = 0
    error = None
    try:
        with open(path, "rb") as f:
            for buf, records in batches(f):
                vxlan += decode_batch(buf, records, packets)
                packets += len(records)
    except CaptureError as e:
        error = {"message": e.message, "offset": e.offset}
    except OSError as e:
        error = {"message": f"cannot read: {e.strerror or e}", "offset": 0}
    return Report.from_tally(str(path), packets, vxlan, tally, error, opts.plan)


def read_packet(path, number: int):
    """(linktype, frame bytes, orig_len) of packet `number` (1-based), or None if absent.

    Raises CaptureError when the file cannot be read up to that packet.
    """
    seen = 0
    with open(path, "rb") as f:
        for buf, records in batches(f):
            if seen + len(records) >= number:
                start, end, orig, lt = records[number - seen - 1]
                return lt, bytes(buf[start:end]), orig
            seen += len(records)
    return None
