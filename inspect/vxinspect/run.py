"""inspect_source: the read-decode loop for streams, with --interval reports and progress.

How data flows: `capture.batches` reads a `stream.Source` (file, stdin or
tcpdump's stdout) into batches; each batch goes through `decode.make_decoder`'s
decoder into one `report.Tally`, exactly as `analyze.inspect_file` does, so a
stream and a file of the same bytes give the same Report. With an interval, the
batches also carry each record's capture time and a batch is cut where an
interval of capture time ends: everything before the cut is decoded, a Report
of the capture so far goes to `on_interval` together with what that interval
alone held, and decoding goes on. Intervals are counted from the first packet's
time; an interval in which no packet falls is not reported (a gap of days in a
file would otherwise print thousands of empty reports). A live capture
(`wall_clock`) counts intervals in wall-clock time instead: the source calls
back when one ends while it waits for data, so a quiet interface still gets a
report every interval (an empty one). After every batch (and every tick) the
optional `progress` hears how far the reader got. A regular file large enough
(WORKER_MIN) has its checksums summed by a batchsum.Worker on the other core;
its answers are drained before any report is made. With a `recorder`
(--plot: plot.Recorder) the decoder fills the recorder's tally and its batch
columns, and every batch's record times are handed to it. A read fault becomes
Report.error, a SIGINT (stream.Interrupted) the report so far; neither raises.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .analyze import Options
from .batchsum import Worker
from .capture import CaptureError, batches
from .decode import make_decoder
from .report import Report, Tally
from .stream import Interrupted, Source


# A regular file at least this large has its checksums summed by a batchsum.Worker on
# the other core (its fork and numpy import are not worth it for a few batches).
WORKER_MIN = 16 << 20


@dataclass
class Interval:
    index: int  # 0-based, counted from the first packet's time
    start: float  # seconds of capture time since the first packet
    end: float
    packets: int  # in this interval alone
    vxlan_packets: int

    def to_dict(self) -> dict:
        return {"index": self.index, "start": self.start, "end": self.end,
                "packets": self.packets, "vxlan_packets": self.vxlan_packets}


def inspect_source(src: Source, opts: Options | None = None, interval: float | None = None,
                   on_interval=None, progress=None, recorder=None,
                   wall_clock: bool = False) -> tuple[Report, bool]:
    """(Report, interrupted): the whole input, or what came before a read fault or a stop.

    With `wall_clock` (a live capture) --interval's intervals are wall-clock seconds
    from the start, each reported when it ends (from the wait for data, if need be),
    empty or not, and holding the packets decoded in it; otherwise they are capture
    time, cut at the records' times, and an empty one is skipped."""
    opts = opts or Options()
    worker = None
    if (opts.checksums and recorder is None and src.total is not None
            and src.total >= WORKER_MIN):
        try:
            worker = Worker(src.fd)
        except OSError:  # no process to spare: sum here
            worker = None
    if recorder is None:
        tally = Tally()
        decode_batch = make_decoder(opts, tally, worker=worker)
    else:
        tally = recorder.tally
        decode_batch = make_decoder(opts, tally, series=recorder.packet)
    packets = vxlan = 0
    error = None
    interrupted = False
    ticking = bool(interval) and wall_clock
    cut = bool(interval) and not wall_clock  # batches cut at capture-time edges
    stamps: list[float] | None = [] if cut or recorder is not None else None
    t0 = None
    cur = 0  # index of the interval being filled
    mark = (0, 0)  # (packets, vxlan) when it began
    pending = decode_batch.pending
    readers = [] if worker is not None else None

    def report(index: int) -> None:
        """on_interval: the capture so far, and interval `index` (what came since mark)."""
        nonlocal mark
        if pending is not None:
            pending.drain()
        so_far = Report.from_tally(src.name, packets, vxlan, tally, None, opts.plan)
        on_interval(so_far, Interval(index, index * interval, (index + 1) * interval,
                                     packets - mark[0], vxlan - mark[1]))
        mark = (packets, vxlan)

    if ticking:
        begun = time.monotonic()

        def tick() -> float:
            """Report every wall-clock interval that has ended; when the next one ends."""
            nonlocal cur
            now = time.monotonic()
            while now >= begun + (cur + 1) * interval:
                report(cur)
                cur += 1
            if progress is not None:  # the rate falls while the interface is quiet
                progress.update(src.bytes_read, packets)
            return begun + (cur + 1) * interval
        src.every(tick, begun + interval)
    try:
        for buf, records in batches(src, stamps, readers):
            if worker is not None:
                pending.base = readers[0].base
            if recorder is not None:
                recorder.add_times(stamps)
            if not cut:
                vxlan += decode_batch(buf, records, packets)
                packets += len(records)
                if ticking:
                    src.tick_at = tick()
            else:
                if t0 is None:
                    t0 = stamps[0]
                edge = t0 + (cur + 1) * interval
                i = 0
                for j, t in enumerate(stamps):
                    if t < edge:
                        continue
                    vxlan += decode_batch(buf, records[i:j], packets)
                    packets += j - i
                    i = j
                    if packets > mark[0]:
                        report(cur)
                    mark = (packets, vxlan)
                    cur = int((t - t0) // interval)
                    edge = t0 + (cur + 1) * interval
                vxlan += decode_batch(buf, records[i:], packets)
                packets += len(records) - i
            if progress is not None:
                progress.update(src.bytes_read, packets)
    except Interrupted:
        interrupted = True
    except CaptureError as e:
        error = {"message": e.message, "offset": e.offset}
    except OSError as e:
        error = {"message": f"cannot read: {e.strerror or e}", "offset": src.bytes_read}
    finally:
        src.ticks = None
        if worker is not None:
            worker.close()  # its last answers fire before the report is made
        if progress is not None:
            progress.done()
    return Report.from_tally(src.name, packets, vxlan, tally, error, opts.plan), interrupted
