"""--plot FILE.png: one picture of a capture, drawn from what the decode loop recorded.

How data flows: `check_target` vets the path (and that matplotlib is there)
before any capture is read, so a bad path is one line and exit 2 up front.
`run.inspect_source`, given a `Recorder`, decodes into the recorder's
`RecordingTally` (whose `hit` and VNI counter also note each packet number)
with `decode.make_decoder(..., series=Recorder.packet)`, which hands over the
outer IP length, inner L3 length and VXLAN-ness of each VXLAN packet; each
batch's record times are appended as it is read. Without --plot none of this
exists: the decoder pays one falsy test per VXLAN packet. Everything is kept in
`array` columns (8 bytes a field, grown by the array itself), so a million
packets cost tens of megabytes, not Python objects. `series` turns the columns
into the numbers the picture shows (histograms, packets per second per VNI,
check firings in time), and `draw` paints them with matplotlib's Agg backend
(never a display) into a PNG of SIZE pixels. The tests check `series`'s totals
against the Report, so the picture and the text report tell the same story.
"""
from __future__ import annotations

import math
import os
from array import array

from .checks import CHECKS, ERROR, INFO, WARNING
from .report import Tally

WIDTH, HEIGHT, DPI = 1600, 1200, 100
SIZE = (WIDTH, HEIGHT)  # pixels of every PNG --plot writes
SEVERITY_COLOURS = {ERROR: "#d62728", WARNING: "#ff7f0e", INFO: "#1f77b4"}
ROW = 5  # numbers per packet in Recorder.rows
CHECK_IDS = list(CHECKS)  # a check's index in Recorder.fired_cid


class PlotError(Exception):
    """The picture cannot be written: a bad path, no matplotlib, or a failed write."""


def check_target(path: str) -> None:
    """Raise PlotError unless a PNG can be written at `path` (checked before reading)."""
    try:
        import matplotlib  # noqa: F401  (installed by the README's commands)
    except ImportError:
        raise PlotError("--plot needs matplotlib (pip install matplotlib)") from None
    if os.path.isdir(path):
        raise PlotError(f"--plot {path}: is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise PlotError(f"--plot {path}: {parent} {what}")
    if not os.access(parent, os.W_OK | os.X_OK) or (
            os.path.exists(path) and not os.access(path, os.W_OK)):
        raise PlotError(f"--plot {path}: not writable")


class _VniCounts(dict):
    """Tally.vnis that also remembers the last VNI counted (the decoder counts one
    per VXLAN packet at its outermost layer, then calls Recorder.packet)."""

    last = -1

    def __setitem__(self, key, value):
        self.last = key
        dict.__setitem__(self, key, value)


class RecordingTally(Tally):
    """A Tally that also writes down (packet number, check) for every firing it counts."""

    def __init__(self):
        super().__init__()
        self.vnis = _VniCounts()
        self.fired_no = array("q")
        self.fired_cid = array("b")
        self._cid_index = {cid: i for i, cid in enumerate(CHECK_IDS)}

    def hit(self, cid: str, no: int) -> None:
        if self.hits[cid][2] != no:  # what Tally.hit will count: once per packet
            self.fired_no.append(no)
            self.fired_cid.append(self._cid_index[cid])
        Tally.hit(self, cid, no)


class Recorder:
    """Per-packet columns for --plot; `tally` is the Tally to decode into."""

    def __init__(self, underlay_mtu: int, overlay_mtu4: int, overlay_mtu6: int):
        self.underlay_mtu = underlay_mtu
        self.overlay_mtu4 = overlay_mtu4
        self.overlay_mtu6 = overlay_mtu6
        self.tally = RecordingTally()
        self.times = array("d")  # every packet's capture time, in packet order
        # One row of ROW numbers per packet the decoder reported (VXLAN, or caught by
        # the safety net): packet number, outer IP length (-1 unknown: a later
        # fragment), inner L3 length (0 none: ARP, cut short; -1 unknown), the
        # outermost VNI counted for it (-1 none), 1 if VXLAN. One flat array and one
        # extend per packet: the cheapest record Python offers (see README's cost).
        self.rows = array("q")
        self.name = ""
        extend = self.rows.extend
        vnis = self.tally.vnis

        def packet(no: int, outer: int, inner: int, vxlan: bool) -> None:
            extend((no, outer, inner, vnis.last, vxlan))
            vnis.last = -1
        self.packet = packet

    def add_times(self, stamps) -> None:
        self.times.extend(stamps)


def series(rec: Recorder, packets: int | None = None) -> dict:
    """The numbers the picture is drawn from (numpy arrays) and their totals.

    `packets`: how many packets were decoded (the Report's count); times beyond it
    (a batch cut short by SIGINT) are dropped.
    """
    import numpy as np
    times = np.frombuffer(rec.times, dtype=np.float64) if len(rec.times) else np.zeros(0)
    if packets is not None:
        times = times[:packets]
    t0 = float(times[0]) if len(times) else 0.0
    rel = times - t0
    def column(a, dtype):  # a view of the array's buffer, not a copy
        return np.frombuffer(a, dtype=dtype) if len(a) else np.zeros(0, dtype)

    rows = column(rec.rows, np.int64).reshape(-1, ROW)
    no, outer, inner, vni = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    vx = rows[:, 4].astype(bool)

    def at(nos):  # capture time (from the first packet) of packet numbers
        return rel[nos - 1] if len(rel) else np.zeros(len(nos))

    vni_times = {int(v): at(no[vni == v]) for v in np.unique(vni[vni >= 0])}
    fno = column(rec.tally.fired_no, np.int64)
    fcid = column(rec.tally.fired_cid, np.int8)
    checks = {CHECK_IDS[i]: at(fno[fcid == i]) for i in np.unique(fcid)}
    return {
        "t0": t0,
        "duration": float(rel[-1]) if len(rel) else 0.0,
        "times": rel,  # every packet
        "outer_sizes": outer[vx & (outer >= 0)],
        "inner_sizes": inner[vx & (inner > 0)],
        "vni_times": vni_times,  # VNI -> times of its packets
        "check_times": checks,  # check id -> times it fired
        "packets": int(len(rel)),
        "vxlan_packets": int(vx.sum()),
        "vnis": {v: len(t) for v, t in vni_times.items()},
        "checks": {c: len(t) for c, t in checks.items()},
    }


def _bin_width(duration: float) -> float:
    """The smallest round width (1, 2 or 5 times a power of ten seconds) giving at most
    100 bins over the capture: 40-100 bins, whatever its length."""
    if duration <= 0:
        return 1.0
    target = duration / 100
    base = 10.0 ** math.floor(math.log10(target))
    for m in (1, 2, 5, 10):
        if m * base >= target:
            return float(f"{m * base:.3g}")
    return 10 * base


def draw(rec: Recorder, path: str, title: str, packets: int | None = None) -> dict:
    """Write the PNG (SIZE pixels); returns the series it was drawn from."""
    import matplotlib
    matplotlib.use("Agg")  # never a display
    import matplotlib.pyplot as plt
    import numpy as np

    s = series(rec, packets)
    fig = plt.figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI)
    gs = fig.add_gridspec(3, 2, height_ratios=[1.0, 1.0, 0.9], hspace=0.42, wspace=0.18)
    fig.suptitle(f"{title}: {s['packets']} packets, {s['vxlan_packets']} VXLAN, "
                 f"{s['duration']:.3g} s of capture time", fontsize=15)

    def hist(ax, sizes, what, lines):
        if len(sizes):
            top = max(int(sizes.max()), *(m for m, _ in lines))
            ax.hist(sizes, bins=np.linspace(0, top * 1.05 + 1, 80), color="#4c72b0")
        else:
            ax.text(0.5, 0.5, "no packets", ha="center", va="center", transform=ax.transAxes)
        styles = ["--", ":"]
        for k, (m, label) in enumerate(lines):
            ax.axvline(m, color="#d62728", linestyle=styles[k % 2], linewidth=1.8,
                       label=f"{label}: {m}")
        ax.legend(loc="upper left", fontsize=11)
        ax.set_title(f"{what} ({len(sizes)} packets)", fontsize=13)
        ax.set_xlabel("bytes")
        ax.set_ylabel("packets")
        if len(sizes):
            ax.set_yscale("log")

    hist(fig.add_subplot(gs[0, 0]), s["outer_sizes"], "outer IP packet length",
         [(rec.underlay_mtu, "underlay MTU")])
    mtus = sorted({rec.overlay_mtu4, rec.overlay_mtu6}, reverse=True)
    hist(fig.add_subplot(gs[0, 1]), s["inner_sizes"], "inner L3 packet length",
         [(m, "overlay MTU" + ("" if len(mtus) == 1 else
                               " (IPv6 outer)" if m == rec.overlay_mtu6 else " (IPv4 outer)"))
          for m in mtus])

    width = _bin_width(s["duration"])
    # the time axis in s, ms or us, whichever reads without an offset label
    unit, scale = next((u, k) for u, k in (("s", 1.0), ("ms", 1e3), ("us", 1e6))
                       if s["duration"] * k >= 1 or u == "us")
    time_label = f"capture time ({unit} from the first packet)"
    edges = np.arange(0, s["duration"] + width * 1.0001, width)
    if len(edges) < 2:
        edges = np.array([0.0, width])
    ax = fig.add_subplot(gs[1, :])
    n, _ = np.histogram(s["times"], edges)
    ax.stairs(n / width, edges * scale, color="#888888", linewidth=1, label="all packets")
    for v, t in sorted(s["vni_times"].items()):
        n, _ = np.histogram(t, edges)
        ax.stairs(n / width, edges * scale, linewidth=1.8, label=f"VNI {v}")
    ax.set_ylim(bottom=0)
    ax.set_title(f"packets per second (bins of {width * scale:g} {unit})", fontsize=13)
    ax.set_xlabel(time_label)
    ax.set_ylabel("packets/s")
    ax.ticklabel_format(axis="y", style="plain")
    ax.set_xlim(-0.01 * edges[-1] * scale, edges[-1] * scale)  # a firing at 0 stays in sight
    ax.legend(loc="best", fontsize=10, ncol=min(6, 1 + len(s["vni_times"])))

    ax = fig.add_subplot(gs[2, :], sharex=ax)
    fired = sorted(s["check_times"].items(),
                   key=lambda kv: ([ERROR, WARNING, INFO].index(CHECKS[kv[0]].severity), kv[0]))
    for y, (cid, t) in enumerate(fired):
        colour = SEVERITY_COLOURS[CHECKS[cid].severity]
        ax.scatter(t * scale, np.full(len(t), y), marker="|", s=200, color=colour)
    ax.set_yticks(range(len(fired)))
    ax.set_yticklabels([f"{cid} ({len(t)})" for cid, t in fired], fontsize=10)
    ax.set_ylim(-0.7, max(len(fired), 1) - 0.3)
    ax.invert_yaxis()
    ax.set_title("checks fired (red error, orange warning, blue info)" if fired
                 else "checks fired: none", fontsize=13)
    ax.set_xlabel(time_label)
    try:
        fig.savefig(path, dpi=DPI, format="png")
    except OSError as e:
        raise PlotError(f"--plot {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return s
