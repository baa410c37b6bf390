"""vtep-cni: the CNI plugin that puts containers on a vtep overlay.

How data flows: a runtime (podman, containerd, CRI-O, the kubelet's) runs the
`vtep-cni` binary with CNI_* variables and a network config on stdin. main.py reads
them; spec.py checks the request against the CNI specification (command, variables,
JSON, cniVersion) and shapes every answer (results per version, the error object);
netconf.py checks the plugin's own keys and finds this node's subnet, gateway and
overlay MTU (a plan file, etcd, or the running agent's status file); plugin.py does
the command with vtep.pods (veth to the node bridge, an address from the allocation
file `vtep pod` shares, the gateway, the MTU) and answers. Nothing else prints.
"""
