"""--plot FILE.png: one picture of a capture, drawn from what the decode loop recorded.

How data flows: `check_target` vets the path (and that matplotlib is there)
before any capture is read, so a bad path is one line and exit 2 up front.
`run.inspect_source`, given a `Recorder`, decodes into the recorder's
`RecordingTally` (whose `hit` and VNI counter also note each packet number)
with `decode.make_decoder(..., series=Recorder.packet)`, which hands over the
outer IP length, inner L3 length and VXLAN-ness of each VXLAN packet; each
batch's record times are handed over as it is read. Without --plot none of this
exists: the decoder pays one falsy test per VXLAN packet. A batch's rows wait in
`array` columns (8 bytes a field) only until the next batch: then numpy folds
them into counters -- packets per length, and packets, per-VNI packets and
check firings per time bin, the bins widening tenfold when there would be more
than MAX_BINS -- so the recorder's memory is bounded by the number of distinct
lengths, VNIs and checks, not by the packet count. `series` hands the counters
over (with their totals), and `draw` paints them with matplotlib's Agg backend
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
FINE = 1e-9  # seconds: the first width of Recorder's time bins (a nanosecond capture's tick)
MAX_BINS = 1000  # time bins in use at most (x10 wider when more would be needed)
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
    """A Tally that also writes down (packet number, check) for every firing it counts,
    until the Recorder folds them into its per-bin counts (once per batch)."""

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
    """What the picture needs, in memory that does not grow with the packet count.

    `tally` is the Tally to decode into. During a batch the decoder's rows (and the
    tally's firings) pile up in `array` columns; when the next batch's times arrive
    (`add_times`), or the picture is made (`series`), they are folded with numpy
    into counters and the columns emptied:
      sizes     outer / inner length -> packets (at most one key per length)
      time bins bin -> packets, (bin, VNI) -> packets, (bin, check) -> firings, in
                bins of `width` seconds of capture time from the first packet. The
                width starts at FINE seconds and grows tenfold whenever the bins in
                use would span more than MAX_BINS, old bins merging ten into one, so
                there are at most MAX_BINS bins (per VNI, per check) however long
                the capture; the picture's bins (40-100 over the capture) are whole
                numbers of them.
    """

    def __init__(self, underlay_mtu: int, overlay_mtu4: int, overlay_mtu6: int):
        self.underlay_mtu = underlay_mtu
        self.overlay_mtu4 = overlay_mtu4
        self.overlay_mtu6 = overlay_mtu6
        self.tally = RecordingTally()
        # This batch, until folded: its record times, the number of the packet before
        # its first, and one row of ROW numbers per packet the decoder reported (VXLAN,
        # or caught by the safety net): packet number, outer IP length (-1 unknown: a
        # later fragment), inner L3 length (0 none: ARP, cut short; -1 unknown), the
        # outermost VNI counted for it (-1 none), 1 if VXLAN. One flat array and one
        # extend per packet: the cheapest record Python offers (see README's cost).
        self.stamps: list[float] = []
        self.before = 0
        self.rows = array("q")
        # Folded: the counters above, and the totals of the picture's title.
        self.width = FINE
        self.t0: float | None = None
        self.last = 0.0  # the last folded packet's time from the first
        self.lo = self.hi = 0  # the lowest and highest bin in use
        self.packets = self.vxlan = 0
        self.outer_sizes: dict[int, int] = {}
        self.inner_sizes: dict[int, int] = {}
        self.all_bins: dict[int, int] = {}
        self.vni_bins: dict[tuple[int, int], int] = {}
        self.check_bins: dict[tuple[int, int], int] = {}
        extend = self.rows.extend
        vnis = self.tally.vnis

        def packet(no: int, outer: int, inner: int, vxlan: bool) -> None:
            extend((no, outer, inner, vnis.last, vxlan))
            vnis.last = -1
        self.packet = packet

    def add_times(self, stamps) -> None:
        """A new batch is about to be decoded: fold the last one, keep these times."""
        self.fold()
        self.before = self.packets
        self.stamps = list(stamps)

    def state(self) -> dict:
        """How many entries each folded structure holds (the tests watch them stay put)."""
        return {k: len(getattr(self, k)) for k in
                ("outer_sizes", "inner_sizes", "all_bins", "vni_bins", "check_bins")}

    def fold(self, packets: int | None = None) -> None:
        """Count the pending batch into the bins; with `packets` (how many the Report
        counts in all), times beyond it (a batch cut short) are dropped."""
        import numpy as np
        times = np.asarray(self.stamps, dtype=np.float64)
        if packets is not None:
            times = times[:max(0, packets - self.before)]
        self.stamps = []
        # copies (not views), so that the columns can be emptied for the next batch
        rows = np.array(self.rows, dtype=np.int64).reshape(-1, ROW)
        fno = np.array(self.tally.fired_no, dtype=np.int64)
        fcid = np.array(self.tally.fired_cid, dtype=np.int64)
        if len(times):
            if self.t0 is None:
                self.t0 = float(times[0])
                self.lo = self.hi = 0
            rel = times - self.t0
            self.last = float(rel[-1])
            self._widen(int(np.floor(rel.min() / self.width)),
                        int(np.floor(rel.max() / self.width)))
            bins = np.floor(rel / self.width).astype(np.int64)
            _count(self.all_bins, bins)
            self.packets += len(times)

            def bin_of(nos):  # a packet number's bin (one outside the batch: its edge)
                i = np.clip(nos - self.before - 1, 0, len(bins) - 1)
                return bins[i]
            vx = rows[:, 4].astype(bool)
            self.vxlan += int(vx.sum())
            _count(self.outer_sizes, rows[vx & (rows[:, 1] >= 0), 1])
            _count(self.inner_sizes, rows[vx & (rows[:, 2] > 0), 2])
            has = rows[:, 3] >= 0
            _count(self.vni_bins, np.stack((bin_of(rows[has, 0]), rows[has, 3]), axis=1))
            _count(self.check_bins, np.stack((bin_of(fno), fcid), axis=1))
        # the columns' memory is reused, not given back: a batch's worth at most
        del self.rows[:]
        del self.tally.fired_no[:]
        del self.tally.fired_cid[:]

    def _widen(self, lo: int, hi: int) -> None:
        """Make room for bins lo..hi (at the current width): coarsen tenfold until all
        the bins in use fit in MAX_BINS."""
        lo, hi = min(lo, self.lo), max(hi, self.hi)
        while hi - lo >= MAX_BINS:
            self.width *= 10
            lo, hi = lo // 10, hi // 10
            self.all_bins = _merge(self.all_bins, lambda k: k // 10)
            self.vni_bins = _merge(self.vni_bins, lambda k: (k[0] // 10, k[1]))
            self.check_bins = _merge(self.check_bins, lambda k: (k[0] // 10, k[1]))
        self.lo, self.hi = lo, hi


def _count(counter: dict, keys) -> None:
    """Add one to counter[key] for each key (ints, or rows of two ints: a tuple key)."""
    import numpy as np
    if not len(keys):
        return
    if keys.ndim == 1:
        u, n = np.unique(keys, return_counts=True)
        pairs = zip(u.tolist(), n.tolist())
    else:
        u, n = np.unique(keys, axis=0, return_counts=True)
        pairs = zip(map(tuple, u.tolist()), n.tolist())
    for k, c in pairs:
        counter[k] = counter.get(k, 0) + c


def _merge(counter: dict, rekey) -> dict:
    out: dict = {}
    for k, c in counter.items():
        k = rekey(k)
        out[k] = out.get(k, 0) + c
    return out


def series(rec: Recorder, packets: int | None = None) -> dict:
    """The numbers the picture is drawn from and their totals (folds what is pending).

    `packets`: how many packets were decoded (the Report's count); times beyond it
    (a batch cut short by SIGINT) are dropped.
    """
    rec.fold(packets)
    vnis: dict[int, int] = {}
    for (_b, v), c in rec.vni_bins.items():
        vnis[v] = vnis.get(v, 0) + c
    checks: dict[str, int] = {}
    for (_b, i), c in rec.check_bins.items():
        checks[CHECK_IDS[i]] = checks.get(CHECK_IDS[i], 0) + c
    return {
        "t0": rec.t0 or 0.0,
        "duration": rec.last,
        "width": rec.width,  # seconds per bin of the three below
        "bins": dict(rec.all_bins),  # bin -> packets (every packet)
        "vni_bins": dict(rec.vni_bins),  # (bin, VNI) -> packets
        "check_bins": {(b, CHECK_IDS[i]): c for (b, i), c in rec.check_bins.items()},
        "outer_sizes": dict(rec.outer_sizes),  # length -> VXLAN packets
        "inner_sizes": dict(rec.inner_sizes),
        "packets": rec.packets,
        "vxlan_packets": rec.vxlan,
        "vnis": vnis,
        "checks": checks,
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

    def hist(ax, counts, what, lines):
        sizes = np.fromiter(counts.keys(), dtype=np.float64, count=len(counts))
        weights = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        total = int(weights.sum())
        if total:
            top = max(int(sizes.max()), *(m for m, _ in lines))
            ax.hist(sizes, bins=np.linspace(0, top * 1.05 + 1, 80), weights=weights,
                    color="#4c72b0")
        else:
            ax.text(0.5, 0.5, "no packets", ha="center", va="center", transform=ax.transAxes)
        styles = ["--", ":"]
        for k, (m, label) in enumerate(lines):
            ax.axvline(m, color="#d62728", linestyle=styles[k % 2], linewidth=1.8,
                       label=f"{label}: {m}")
        ax.legend(loc="upper left", fontsize=11)
        ax.set_title(f"{what} ({total} packets)", fontsize=13)
        ax.set_xlabel("bytes")
        ax.set_ylabel("packets")
        if total:
            ax.set_yscale("log")

    hist(fig.add_subplot(gs[0, 0]), s["outer_sizes"], "outer IP packet length",
         [(rec.underlay_mtu, "underlay MTU")])
    mtus = sorted({rec.overlay_mtu4, rec.overlay_mtu6}, reverse=True)
    hist(fig.add_subplot(gs[0, 1]), s["inner_sizes"], "inner L3 packet length",
         [(m, "overlay MTU" + ("" if len(mtus) == 1 else
                               " (IPv6 outer)" if m == rec.overlay_mtu6 else " (IPv4 outer)"))
          for m in mtus])

    # whole numbers of the recorder's bins (its width is a power of ten seconds, and
    # at most a tenth of the capture once it spans more than MAX_BINS of them)
    fine = s["width"]
    per = max(1, round(_bin_width(s["duration"]) / fine))
    width = per * fine
    # the time axis in s, ms or us, whichever reads without an offset label
    unit, scale = next((u, k) for u, k in (("s", 1.0), ("ms", 1e3), ("us", 1e6))
                       if s["duration"] * k >= 1 or u == "us")
    time_label = f"capture time ({unit} from the first packet)"
    edges = np.arange(0, s["duration"] + width * 1.0001, width)
    if len(edges) < 2:
        edges = np.array([0.0, width])
    ax = fig.add_subplot(gs[1, :])
    nbins = len(edges) - 1

    def rebinned(counts):  # {fine bin: packets} -> packets per picture bin
        k = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts)) // per
        w = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        inside = (k >= 0) & (k < nbins)
        return np.bincount(k[inside], weights=w[inside], minlength=nbins)[:nbins]

    ax.stairs(rebinned(s["bins"]) / width, edges * scale, color="#888888", linewidth=1,
              label="all packets")
    per_vni: dict[int, dict[int, int]] = {}
    for (b, v), c in s["vni_bins"].items():
        per_vni.setdefault(v, {})[b] = c
    for v, counts in sorted(per_vni.items()):
        ax.stairs(rebinned(counts) / width, edges * scale, linewidth=1.8, label=f"VNI {v}")
    ax.set_ylim(bottom=0)
    ax.set_title(f"packets per second (bins of {width * scale:g} {unit})", fontsize=13)
    ax.set_xlabel(time_label)
    ax.set_ylabel("packets/s")
    ax.ticklabel_format(axis="y", style="plain")
    ax.set_xlim(-0.01 * edges[-1] * scale, edges[-1] * scale)  # a firing at 0 stays in sight
    ax.legend(loc="best", fontsize=10, ncol=min(6, 1 + len(per_vni)))

    ax = fig.add_subplot(gs[2, :], sharex=ax)
    fired = sorted(s["checks"].items(),
                   key=lambda kv: ([ERROR, WARNING, INFO].index(CHECKS[kv[0]].severity), kv[0]))
    for y, (cid, _n) in enumerate(fired):
        colour = SEVERITY_COLOURS[CHECKS[cid].severity]
        # one mark per recorder bin it fired in, at the bin's start
        t = np.array(sorted(b for b, c in s["check_bins"] if c == cid), dtype=np.float64) * fine
        ax.scatter(t * scale, np.full(len(t), y), marker="|", s=200, color=colour)
    ax.set_yticks(range(len(fired)))
    ax.set_yticklabels([f"{cid} ({n})" for cid, n in fired], fontsize=10)
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
