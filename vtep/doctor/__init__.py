"""`vtep doctor`: one node's health, as findings an operator can act on.

How data flows: command.py gathers the facts once (the plan from a file or etcd, this
node, its underlay, the agent's status file, the device and its entries as the kernel
has them) into a Facts; each check module (agent.py, device.py, hostcheck.py, and
probe.py with --probe) is a function from Facts to Findings and changes nothing on the
host; finding.py orders and renders them (one line each, or JSON) and says whether an
error was found, which the CLI maps to the exit status (0 healthy, 1 an error).
"""
