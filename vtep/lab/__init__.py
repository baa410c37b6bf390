"""The namespace lab: `vtep lab up|demo|down` (the seed topology on one machine).

topology.py  Topology/Node/Link model and seed() (mininet-like, teardown in finally)
echo.py      the pods' HTTP echo server (/echo answers JSON: headers, body, client address)
lab.py       up/down: topology + plan + `vtep run --kernel|--userspace` (--mode kernel,
             userspace, or mixed) + pods, recorded in a state file
demo.py      the CNI checks, the router capture and vxinspect's verdict
"""
from __future__ import annotations


def command(args) -> int:
    """Entry point of `vtep lab ACTION` (see vtep/cli.py)."""
    from . import lab
    return lab.command(args)
