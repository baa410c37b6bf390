"""The namespace lab: `vtep lab up|demo|down` (the seed cluster on one machine).

How it fits together, in the order a newcomer reads it:

seed.py      the seed cluster written once (SEED: nodes, underlay addresses in both
             families, pod subnets, router, MTU) and its two generators: plan_text() (the
             TOML plan) and topology() (the namespaces, veths and routes)
topology.py  the Topology/Node/Link model topology() fills (mininet-like; start() builds,
             stop() ends our processes by PID and deletes our namespaces)
lab.py       the one lab builder: build(lab, LabSpec) makes plan, topology, pods, a
             narrowed link, `vtep run` per node (--mode kernel, userspace or mixed) and the
             pods' echo servers; `vtep lab up`, the MTU suite, the tests, the benchmarks and
             the sample generators differ only in their LabSpec
record.py    what a lab made (<base>/lab-PREFIX/state.json), written as it is made, so
             that teardown (`vtep lab down`, or a failing step) removes exactly that
demo.py      the CNI checks, the router capture and vxinspect's verdict
echo.py      the pods' HTTP echo server (/echo answers JSON: headers, body, client address)

Imports run one way: seed -> topology; lab -> seed, record; demo -> lab; this module ->
demo, lab (no cycle, nothing imported inside a function to dodge one).
"""
from __future__ import annotations

from ..host import require_net_admin
from . import demo, lab as lablib
from .record import Lab, teardown


def command(args) -> int:
    """Entry point of `vtep lab ACTION` (see vtep/cli.py): the one place that reads the
    command line; everything below takes plain values."""
    require_net_admin(f"vtep lab {args.action}")
    lab = Lab(args.prefix)
    if args.action == "up":
        lablib.up(lab, args.mode or "kernel", underlay=args.underlay or "ipv4",
                  store=args.store or "plan", nodes=args.nodes or 2,
                  dual_stack=args.dual_stack)
        what = lablib.describe_mode(lab.mode, lab.underlay, lab.nodes, args.store or "plan",
                                    lab.dual_stack)
        print(f"lab {lab.prefix}: up ({what}); `vtep lab down --prefix {lab.prefix}` "
              "removes it")
        return 0
    if args.action == "down":
        if not lab.exists:
            print(f"lab {lab.prefix}: not up; nothing to do")
            return 0
        gone = teardown(lab.load())
        print(f"lab {lab.prefix}: down" + (f" (removed {', '.join(gone)})" if gone else ""))
        return 0
    return demo.run(lab, args.mode, args.underlay, args.capture, args.keep, args.store,
                    args.nodes, args.dual_stack)
