"""vtep: VXLAN overlays between nodes, the way flannel and Calico build them.

How data flows: a cluster plan (which node owns which overlay subnet, reached
at which underlay IP) becomes per-node desired state; a data path realises it.
Frames leaving a pod cross the node's bridge, are wrapped in the 8-byte VXLAN
header of `vtep.wire` (RFC 7348) inside UDP/4789, and are sent to the peer
that owns the destination; the receiving node strips the header and delivers
the inner frame. `vtep.wire` is the one definition of that header, shared by
the data paths and by the `vxinspect` capture inspector.
"""

__version__ = "0.1.0"
