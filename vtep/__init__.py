"""vtep: VXLAN overlays between nodes, the way flannel and Calico build them.

How data flows: a cluster plan (which node owns which overlay subnet, reached
at which underlay IP) becomes per-node desired state; a data path realises it.
Frames leaving a pod cross the node's bridge, are wrapped in the 8-byte VXLAN
header of `vtep.wire` (RFC 7348) inside UDP/4789, and are sent to the peer
that owns the destination; the receiving node strips the header and delivers
the inner frame. `vtep.wire` is the one definition of that header, shared by
the data paths and by the `vxinspect` capture inspector.

Where to start reading `vtep run` (the control plane, both paths):

    cli.py -> commands.run          parse; build config.RunConfig; compose
    source.FileSource               plans after the first (SIGHUP re-reads)
    reconcile.Reconciler.converge   one pass: host.underlay_facts -> state.desired
                                    (pure) -> backend.ensure (the device) ->
                                    netlink.Rtnl.read -> kernel.diff (pure) ->
                                    netlink.Rtnl.apply (each refusal mapped back
                                    to its entry)
    daemon.serve                    one select(): signals, netlink events, the
                                    plan source, the backend's fds; the periodic
                                    resync; status.StatusFile

The device backends (reconcile.DeviceBackend, given to the reconciler, never
inherited): vxlanlink.VxlanLink, the Linux vxlan device (the kernel forwards);
userspace.TapLink, a TAP device whose frames datapath.Datapath encapsulates
(tx_batch) and decapsulates (rx_batch) in this process. Both share links.Links
(device-level netlink calls) and linkfacts (a device as the kernel reports it,
compared with the plan's).
"""

__version__ = "0.1.0"
