"""Real podman containers inside a lab node's network namespace, fully contained (Podman).

Data flows like this: start() writes everything podman reads into one temporary directory
(the CNI plugins as symlinks or recording wrappers, the conflists, a containers.conf, the
image tarball), then starts one keeper process per node: it enters the node's network
namespace, makes a private mount namespace and there lays copy-on-write overlays over /var
and /run (their upper layers on a tmpfs of that namespace) and tmpfs mounts over /run/netns
and /dev/shm, then sleeps. Every podman command then runs as `nsenter --target <keeper>
--mount --net podman <flags> ...`, so all of them, conmon, `podman container cleanup` and
every CNI plugin call share that one mount namespace and the node's network namespace:
what podman writes outside its --root/--runroot/--tmpdir (libcni's result cache and
host-local's leases under /var/lib/cni, the image blob-info cache under /var/lib/containers,
runc's state under /run/runc, the container netns files under /run/netns, the shm lock
file /dev/shm/libpod_lock) lands in those private layers and disappears with the
namespace; the host's files stay visible underneath (a plugin can read them) but are
never written. Containers get the node's bridge/veths through the CNI plugins given,
addresses from the conflists; the only host-global things podman makes are the
containers' cgroups, all under one cgroup parent named after the node's namespace, which
stop() removes. stop() removes the containers (`podman rm -f -a -t 0`), ends what is left
in the keeper's mount namespace and its descendants (by PID), then the keeper, the cgroup
directories and the temporary directory; it is safe after any failure and twice.

    from podmanlab import Podman, IMAGE, HTTPD, have_podman

    conflist = {"cniVersion": "1.0.0", "name": "vttnet", "plugins": [{"type": "bridge",
                "bridge": "cni0", "isGateway": True, "ipam": {"type": "host-local",
                "ranges": [[{"subnet": "10.99.0.0/24"}]]}}]}
    with Podman(topo["n1"], tmp_path, {"bridge": "/usr/lib/cni/bridge",
                "host-local": "/usr/lib/cni/host-local"}, conflist, record={"bridge"}) as pm:
        pm.run("web", HTTPD)                           # -> container id
        pm.run("cli", ["sleep", "300"])
        pm.exec("cli", ["ping", "-c1", "-W1", pm.ip("web")])
        pm.fetch("cli", f"http://{pm.ip('web')}/cgi-bin/ip")   # -> the client's address
        pm.cni_calls()                                 # what the recorded plugins were given

API:
- have_podman() -> None, or the reason podman containers cannot run here (a skip reason).
- Podman(node, tmpdir, cni_plugins, conflists, *, record=(), image=IMAGE):
  node is a vtep.lab.topology.Node (its .name/.ns/.path); the files go to
  tmpdir/podman-<node name> (.dir), the runroot to a short /tmp/vttpm-<node>-XXXX
  (.runroot); cni_plugins maps a plugin type to an executable (symlinked into the plugin
  directory, .plugin_dir; the names in `record` get a wrapper instead that records each
  call, then runs the real one); conflists is one conflist dict or a list of them (file
  name = its "name"). start() -> self; stop(); a context manager. Also .keeper (Popen),
  .cgroup (the cgroup parent's name), .stop_errors (what the last stop() had to do or could
  not: empty after a clean run).
- .podman(args, timeout=60, check=True) -> CompletedProcess; .popen(args) -> Popen (for
  concurrent starts; the caller waits for it).
- .run(name, argv, network=None, detach=True, extra=(), net_raw=True) -> container id
  (network: a conflist name, None = the first); .run_argv(...) -> those podman arguments.
- .exec(name, argv, timeout=30, check=False) -> CompletedProcess; .fetch(name, url,
  timeout=5) -> response body; .ip(name) -> eth0's IPv4; .pid(name) -> the container's init
  PID on the host; .netns(name) -> its netns path (CNI_NETNS, in the keeper's namespace);
  .inspect(name, fmt); .rm(name); .ours() -> PIDs of ours (see there);
  .host_path(p) -> p as the keeper's namespace sees it (e.g. /var/lib/cni/networks/NET);
  .cni_calls() -> recorded calls, oldest first ({"command", "plugin", "env" (the CNI_*
  variables), "environ" (all of them), "stdin", "stdout", "rc"}).

Flags every podman call gets (podman 4.3.1, CNI backend): --root, --runroot, --tmpdir (ours),
--network-backend cni (a hidden flag in 4.3), --network-config-dir, --runtime runc,
--cgroup-manager cgroupfs, --events-backend file; the plugin directory has no flag and comes
from containers.conf (CONTAINERS_CONF, which podman hands on to conmon and so to `podman
container cleanup`). Every `run` gets --pull never, --cgroups no-conmon and --cgroup-parent
(see CGROUP_ROOTS), explicit --ulimit nofile and nproc (see ulimits()) and --cap-add NET_RAW
(busybox's ping opens a raw socket and has no ICMP-datagram fallback, so the
net.ipv4.ping_group_range sysctl does not help it).

What a CNI plugin gets from podman 4.3.1 (recorded, see tests/test_podmanlab_netns.py):
- VERSION first (CNI_CONTAINERID empty, CNI_NETNS, CNI_IFNAME and CNI_PATH "dummy"), then
  ADD or DEL; never CHECK (run, rm, restart). `podman restart` is DEL then ADD with a new
  netns path.
- CNI_NETNS=/run/netns/netns-<uuid> (a path in the keeper's mount namespace: read it from the
  host as host_path(...)), CNI_IFNAME=eth0, CNI_PATH=the plugin directory,
  CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=<container name>", plus ";MAC=...;IP=..." for
  `run --mac-address/--ip` (as CNI_ARGS, not runtimeConfig, even with those capabilities).
- stdin: the plugin's conf with "name" and "cniVersion" copied in from the list;
  "runtimeConfig" only for declared capabilities (portMappings, aliases); DEL's has the
  ADD result as "prevResult" (libcni's cache under /var/lib/cni/results).
- The environment: ADD inherits the podman caller's (so the test's), but DEL runs in
  conmon's cleanup command, with only PATH, HOME, TMPDIR, CONTAINERS_CONF,
  XDG_RUNTIME_DIR left: a plugin that needs PYTHONPATH and the like must set it itself
  (a wrapper script naming absolute paths), or it fails on DEL only.
- A plugin type podman does not know (not bridge/macvlan/ipvlan) is accepted; `podman
  network ls` shows the type as the driver.

Other pitfalls found: podman refuses a --runroot over 50 characters; busybox 1.35's `wget -T`
segfaults (fetch() uses busybox timeout instead); busybox httpd reports an IPv4 client of
its [::] socket as [::ffff:a.b.c.d] (HTTPD listens on 0.0.0.0); a conmon whose container is
gone is reparented to PID 1 and stays a zombie until PID 1 reaps it.
"""
from __future__ import annotations

import io
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from vtep.errors import LabError
from vtep.lab.topology import end_process

IMAGE = "localhost/vtt-busybox:latest"
BUSYBOX = "/bin/busybox"           # busybox-static: runs with nothing else in the image
BUSYBOX_APPLETS = ("sh", "ping", "wget", "httpd", "ip", "ifconfig", "route", "sleep", "cat",
                   "ls", "echo", "nc", "ps", "timeout", "hostname", "grep", "sed", "true",
                   "false", "kill", "env", "arp", "mkdir", "rm", "touch", "date", "seq")
# The CGI a server container answers /cgi-bin/ip with: the address the request came from.
# busybox httpd listens on [::] unless told otherwise, and then an IPv4 client shows as
# [::ffff:a.b.c.d]: the script strips that, so the body is the bare address either way.
IP_CGI = b"""#!/bin/sh
a=${REMOTE_ADDR#[}
a=${a%]}
echo "Content-Type: text/plain"
echo
echo "${a#::ffff:}"
"""
HTTPD = ["httpd", "-f", "-p", "0.0.0.0:80", "-h", "/www"]   # foreground, IPv4, the CGI above
TAG = "vtt-podman"

# cgroup v1 hierarchies (and v2's unified one) the containers' cgroups appear in: with the
# cgroupfs manager runc makes <parent>/libpod-<id> in each and removes it at `podman rm`,
# but the parent stays: stop() removes it (only ours: it is named after the node's
# namespace). Without --cgroup-parent it is /libpod_parent, shared with any other podman;
# without --cgroups no-conmon conmon would get <parent>/conmon as well. (--cgroups disabled
# would make none, but podman allows it only with crun.)
CGROUP_ROOTS = Path("/sys/fs/cgroup")
RUNROOT_BASE = "/tmp"   # short: see _write_files
READY_LIMIT = 10.0    # seconds the keeper may take to mount its layers
KEEPER_LIFE = 3600    # seconds the keeper sleeps: bounded even if nobody ever stops it
STOP_WAIT = 5.0       # seconds conmon may take to exit after `podman rm` (it runs cleanup)


class PodmanError(LabError):
    """A podman command failed, or the harness could not set up or tear down."""


def have_podman() -> str | None:
    """None if podman containers can run here, else why not (the skip reason)."""
    for tool in ("podman", "runc", "conmon", "nsenter", "unshare"):
        if not shutil.which(tool):
            return f"{tool} not found (bootstrap.sh installs podman)"
    if not _static(BUSYBOX):
        return f"{BUSYBOX} is missing or not statically linked (install busybox-static)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay filesystem"
    if os.geteuid() != 0:
        return "needs root"
    try:
        r = subprocess.run(["podman", "--version"], capture_output=True, text=True, timeout=10)
        major = int(r.stdout.split()[-1].split(".")[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return "podman --version failed"
    if major < 4:
        return f"podman {r.stdout.split()[-1]} is older than 4 (no --network-config-dir)"
    return None


def _static(path: str) -> bool:
    """An ELF file without a PT_INTERP program header (no dynamic loader needed)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2:   # 64-bit only: what Debian ships here
        return False
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    return all(int.from_bytes(data[phoff + i * phentsize:phoff + i * phentsize + 4],
                              "little") != 3 for i in range(phnum))


def image_tar(path: Path) -> Path:
    """A root filesystem tarball: busybox-static, its applets as symlinks, the /www CGI."""
    def add(tf, name, kind, mode=0o755, data=b"", link=""):
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.linkname, ti.size = kind, mode, link, len(data)
        tf.addfile(ti, io.BytesIO(data) if data else None)
    with tarfile.open(path, "w") as tf:
        for d in ("bin", "etc", "www", "www/cgi-bin", "proc", "sys", "dev", "root", "run"):
            add(tf, d, tarfile.DIRTYPE)
        add(tf, "tmp", tarfile.DIRTYPE, 0o1777)
        tf.add(BUSYBOX, "bin/busybox")
        for a in BUSYBOX_APPLETS:
            add(tf, f"bin/{a}", tarfile.SYMTYPE, link="busybox")
        add(tf, "www/cgi-bin/ip", tarfile.REGTYPE, data=IP_CGI)
        add(tf, "www/index.html", tarfile.REGTYPE, 0o644, b"vtt\n")
        add(tf, "etc/passwd", tarfile.REGTYPE, 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        add(tf, "etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\n")
    return path


def ulimits() -> list[str]:
    """Explicit --ulimit flags. Without them podman asks runc for nofile 1048576 (above
    this machine's hard limit, `ulimit -Hn`) and for nproc = its own hard limit (96363 here),
    above the 32768 conmon runs with; raising a hard limit needs CAP_SYS_RESOURCE, which
    root here lacks, so runc fails with "error setting rlimit type 7" (nofile) or "type 6"
    (nproc): operation not permitted. nproc up to 32768 was found to work."""
    nofile = min(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    nproc = min(4096, resource.getrlimit(resource.RLIMIT_NPROC)[1])
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


# A CNI plugin wrapper that keeps one call's environment, stdin, stdout and exit
# status (files named <ns since epoch>-<pid>-<command>-<plugin>.*), then answers as the real
# plugin did. %(real)s and %(log)s are filled in by start().
RECORDER = """#!/bin/sh
f=%(log)s/$(date +%%s%%N)-$$-${CNI_COMMAND:-none}-%(name)s
env | sort > "$f.env"
cat > "$f.stdin"
%(real)s < "$f.stdin" > "$f.stdout"
rc=$?
echo $rc > "$f.rc"
cat "$f.stdout"
exit $rc
"""

# Runs in the node's network namespace, in a new private mount namespace (unshare
# --propagation private: nothing mounted here propagates to the host). The host's /run/netns
# copies are detached first: they would otherwise pin every other lab's namespaces for as
# long as this one lives. %(priv)s is the tmpfs holding the overlays' upper layers.
KEEPER = """set -e
umount -R -l /run/netns 2>/dev/null || true
mount -t tmpfs -o mode=0700 %(tag)s %(priv)s
for d in var run; do
    mkdir -p %(priv)s/$d/upper %(priv)s/$d/work
    mount -t overlay %(tag)s -o lowerdir=/$d,upperdir=%(priv)s/$d/upper,workdir=%(priv)s/$d/work /$d
done
mkdir -p /run/netns
mount -t tmpfs -o mode=0755 %(tag)s /run/netns
mount -t tmpfs -o mode=1777 %(tag)s /dev/shm
echo ready
exec sleep %(life)d
"""


class Podman:
    """Podman in one lab node's network namespace; see the module docstring."""

    def __init__(self, node, tmpdir, cni_plugins: dict[str, str | Path],
                 conflists: dict | list[dict], *, record=(), image: str = IMAGE):
        self.node = node
        self.dir = Path(tmpdir) / f"podman-{node.name}"
        self.cni_plugins = {k: Path(v) for k, v in cni_plugins.items()}
        self.conflists = [conflists] if isinstance(conflists, dict) else list(conflists)
        self.record = set(record)
        unknown = self.record - set(self.cni_plugins)
        if unknown:
            raise PodmanError(f"record names plugins not given: {sorted(unknown)}")
        self.image = image
        self.cgroup = f"{node.ns}-{TAG}"   # unique per run and node
        self.runroot: Path | None = None
        self.keeper: subprocess.Popen | None = None
        self.mnt_ns: str | None = None
        self.started = False
        self.made_dir = False   # .dir is ours to remove
        self.stop_errors: list[str] = []

    # --- paths -----------------------------------------------------------------------------

    @property
    def plugin_dir(self) -> Path:
        return self.dir / "cni-bin"

    @property
    def log_dir(self) -> Path:
        return self.dir / "cni-log"

    def host_path(self, path: str) -> Path:
        """`path` as seen in the keeper's mount namespace (its private /var, /run)."""
        if self.keeper is None:
            raise PodmanError("the keeper is not running")
        return Path(f"/proc/{self.keeper.pid}/root") / path.lstrip("/")

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "Podman":
        if self.started:
            return self
        if self.dir.exists():   # not ours to use, nor (in stop) to remove
            raise PodmanError(f"{self.dir} exists already (a second Podman for {self.node.name}?)")
        try:
            self._write_files()
            self._start_keeper()
            self.podman(["import", str(image_tar(self.dir / "image.tar")), self.image])
        except BaseException:
            self.stop()
            raise
        self.started = True
        return self

    def _write_files(self) -> None:
        self.made_dir = True
        for d in ("root", "tmp", "net.d", "cni-bin", "cni-log", "priv"):
            (self.dir / d).mkdir(parents=True)
        # podman refuses a --runroot longer than 50 characters (conmon's attach socket lives
        # below it, and a socket path has 108 bytes); pytest's tmp_path is longer than that
        self.runroot = Path(tempfile.mkdtemp(prefix=f"vttpm-{self.node.name}-", dir=RUNROOT_BASE))
        for name, real in self.cni_plugins.items():
            dst = self.plugin_dir / name
            if name in self.record:
                dst.write_text(RECORDER % {"log": self.log_dir, "real": real, "name": name})
                dst.chmod(0o755)
            else:
                dst.symlink_to(real)
        for c in self.conflists:
            (self.dir / "net.d" / f"{c['name']}.conflist").write_text(json.dumps(c, indent=1))
        # Only this file is read (CONTAINERS_CONF replaces /usr/share/containers and
        # /etc/containers): the plugin directory has no command-line flag in podman 4.3.
        (self.dir / "containers.conf").write_text(
            "[network]\n"
            'network_backend = "cni"\n'
            f'cni_plugin_dirs = ["{self.plugin_dir}"]\n'
            f'network_config_dir = "{self.dir / "net.d"}"\n'
            f'default_network = "{self.conflists[0]["name"]}"\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'runtime = "runc"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.dir / "events.log"}"\n'
            f'tmp_dir = "{self.dir / "tmp"}"\n')

    def _start_keeper(self) -> None:
        script = KEEPER % {"tag": TAG, "priv": self.dir / "priv",
                           "life": KEEPER_LIFE}
        self.keeper = subprocess.Popen(
            ["nsenter", f"--net={self.node.path}", "unshare", "--mount",
             "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # nsenter and unshare exec (no --fork), sh execs sleep: one PID throughout
        line = _readline(self.keeper, READY_LIMIT)
        if line.strip() != "ready":
            keeper, self.keeper = self.keeper, None
            end_process(keeper)
            err = keeper.stderr.read().strip()
            keeper.stdout.close()
            keeper.stderr.close()
            raise PodmanError(f"podman keeper in {self.node.ns} did not come up: {err or line}")
        self.mnt_ns = os.readlink(f"/proc/{self.keeper.pid}/ns/mnt")

    def stop(self) -> None:
        """Remove every container, end what is left of ours by PID, the keeper, the cgroup
        directories, the temporary directory. Safe after any failure and repeated; never
        raises: what went wrong is in .stop_errors (a test asserts it is empty)."""
        errors = self.stop_errors = []
        if self.keeper is not None and self.keeper.poll() is None:
            # While the keeper lives its mount namespace does, so no other process can have
            # that namespace's inode number: ours() names only processes of ours
            try:
                r = self.podman(["rm", "-f", "-a", "-t", "0"], check=False, timeout=60)
                if r.returncode:
                    errors.append(f"podman rm -f -a: {r.stderr.strip()}")
            except PodmanError as e:   # timed out: what it left is ended by PID below
                errors.append(str(e))
            errors += self._end_ours(by_mount_ns=True)
        elif self.keeper is not None:
            # Someone ended the keeper: podman cannot be entered any more. The containers
            # are still known by their cgroup; their conmons then exit by themselves
            errors.append(f"the keeper had ended (exit {self.keeper.returncode}) before stop()")
            errors += self._end_ours(by_mount_ns=False)
        if self.keeper is not None:
            end_process(self.keeper)
            for f in (self.keeper.stdout, self.keeper.stderr):
                f.close()
            self.keeper = None
        errors += self._remove_cgroups()
        for d in (self.dir if self.made_dir else None, self.runroot):
            if d is not None and d.exists():
                shutil.rmtree(d, onerror=lambda fn, path, exc: errors.append(
                    f"rm {path}: {exc[1]}"))
        self.started = False

    def _end_ours(self, by_mount_ns: bool) -> list[str]:
        """Wait for ours() to go (conmon exits a moment after `podman rm` returns, once its
        cleanup command is done), SIGKILL by PID what did not, and wait again."""
        def gone():
            return not self.ours(by_mount_ns=by_mount_ns)
        if by_mount_ns and _wait(gone, STOP_WAIT):
            return []
        errors = []
        for pid in self.ours(by_mount_ns=by_mount_ns):
            _kill(pid)
            errors.append(f"pid {pid} of ours still there: killed")
        if not _wait(gone, STOP_WAIT):
            errors.append(f"pids {self.ours(by_mount_ns=by_mount_ns)} survived SIGKILL")
        if not by_mount_ns:   # the conmons of the containers just killed: let them finish
            _wait(lambda: not self.ours(), STOP_WAIT)
        return errors

    def _remove_cgroups(self) -> list[str]:
        """rmdir our cgroup parent, children first, in every hierarchy. Only an empty cgroup
        (no processes, no children) can be removed, so this takes nothing of anyone else's."""
        errors = []
        for top in CGROUP_ROOTS.glob(f"*/{self.cgroup}"):
            dirs = [p for p in top.rglob("*") if p.is_dir()] + [top]
            for d in sorted(dirs, key=lambda p: -len(p.parts)):
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    errors.append(f"rmdir {d}: {e.strerror}")
        return errors

    def ours(self, *, by_mount_ns: bool = True) -> list[int]:
        """PIDs of ours but the keeper: those in the keeper's mount namespace (podman,
        conmon, the plugins), whatever sits in our cgroup parent (the containers; one whose
        conmon is gone was handed to PID 1, but its cgroup, named after the node's
        namespace, still says it is ours), and the descendants of both.

        by_mount_ns=False leaves the mount namespace out: once the keeper is gone that
        namespace may have died and its inode number gone to someone else's."""
        if self.mnt_ns is None:
            return []
        parent, found = {}, set()
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            pid = int(p.name)
            try:
                if by_mount_ns and os.readlink(p / "ns/mnt") == self.mnt_ns:
                    found.add(pid)
                parent[pid] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):   # gone meanwhile, or a zombie
                continue
        for procs in CGROUP_ROOTS.glob(f"*/{self.cgroup}/**/cgroup.procs"):
            try:
                found.update(int(x) for x in procs.read_text().split())
            except OSError:
                continue
        todo = list(found)
        while todo:
            pid = todo.pop()
            for child, ppid in parent.items():
                if ppid == pid and child not in found:
                    found.add(child)
                    todo.append(child)
        if self.keeper is not None:
            found.discard(self.keeper.pid)
        return sorted(found)

    def __enter__(self) -> "Podman":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- podman ------------------------------------------------------------------------------

    def argv(self, args: list[str]) -> list[str]:
        if self.keeper is None:
            raise PodmanError("the keeper is not running (start() first)")
        return ["nsenter", f"--target={self.keeper.pid}", "--mount", "--net",
                "podman", "--root", str(self.dir / "root"), "--runroot", str(self.runroot),
                "--tmpdir", str(self.dir / "tmp"), "--network-backend", "cni",
                "--network-config-dir", str(self.dir / "net.d"), "--runtime", "runc",
                "--cgroup-manager", "cgroupfs", "--events-backend", "file", *args]

    def env(self) -> dict[str, str]:
        return dict(os.environ, CONTAINERS_CONF=str(self.dir / "containers.conf"),
                    TMPDIR=str(self.dir / "tmp"))

    def podman(self, args: list[str], *, timeout: float = 60, check: bool = True,
               input: str | None = None) -> subprocess.CompletedProcess:
        full = self.argv(args)
        try:
            r = subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                               env=self.env(), input=input)
        except subprocess.TimeoutExpired:
            raise PodmanError(f"podman {' '.join(args)}: timed out after {timeout:g}s")
        if check and r.returncode:
            raise PodmanError(f"podman {' '.join(args)}: exit {r.returncode}: "
                              f"{r.stderr.strip()}")
        return r

    def popen(self, args: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.argv(args), env=self.env(), text=True, **kw)

    def run_argv(self, name: str, argv: list[str], *, network: str | None = None,
                 detach: bool = True, extra: list[str] = (), net_raw: bool = True) -> list[str]:
        """net_raw=False leaves --cap-add NET_RAW out (podman refuses it next to a
        --cap-drop NET_RAW in `extra`)."""
        net = network or self.conflists[0]["name"]
        return ["run", *(["-d"] if detach else []), "--name", name, "--network", net,
                "--pull", "never", "--cgroups", "no-conmon", "--cgroup-parent", f"/{self.cgroup}",
                *ulimits(), *(["--cap-add", "NET_RAW"] if net_raw else []), *extra,
                self.image, *argv]

    def run(self, name: str, argv: list[str], *, network: str | None = None,
            detach: bool = True, extra: list[str] = (), net_raw: bool = True,
            timeout: float = 60) -> str:
        r = self.podman(self.run_argv(name, argv, network=network, detach=detach, extra=extra,
                                      net_raw=net_raw), timeout=timeout)
        return r.stdout.strip().splitlines()[-1] if detach else r.stdout

    def exec(self, name: str, argv: list[str], *, timeout: float = 30,
             check: bool = False) -> subprocess.CompletedProcess:
        return self.podman(["exec", name, *argv], timeout=timeout, check=check)

    def fetch(self, name: str, url: str, timeout: float = 5) -> str:
        """GET `url` from container `name`. busybox 1.35's `wget -T` segfaults, so the
        limit is busybox timeout's; raises PodmanError when the fetch fails."""
        r = self.exec(name, ["timeout", str(int(timeout)), "wget", "-q", "-O", "-", url],
                      timeout=timeout + 10)
        if r.returncode:
            raise PodmanError(f"{name}: GET {url}: exit {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def inspect(self, name: str, fmt: str) -> str:
        return self.podman(["inspect", "--format", fmt, name]).stdout.strip()

    def ip(self, name: str, dev: str = "eth0") -> str:
        out = self.exec(name, ["ip", "-4", "-o", "addr", "show", "dev", dev], check=True).stdout
        addrs = [line.split()[3].split("/")[0] for line in out.splitlines() if " inet " in line]
        if len(addrs) != 1:
            raise PodmanError(f"{name}: {dev} has {len(addrs)} IPv4 addresses: {out.strip()}")
        return addrs[0]

    def pid(self, name: str) -> int:
        return int(self.inspect(name, "{{.State.Pid}}"))

    def netns(self, name: str) -> str:
        return self.inspect(name, "{{.NetworkSettings.SandboxKey}}")

    def rm(self, name: str, timeout: float = 60) -> None:
        self.podman(["rm", "-f", "-t", "0", name], timeout=timeout)

    def cni_calls(self) -> list[dict]:
        """The recorded plugin calls, oldest first."""
        calls = []
        for rc in sorted(self.log_dir.glob("*.rc"), key=lambda p: int(p.name.split("-")[0])):
            base = str(rc)[:-3]
            _, _, command, plugin = Path(base).name.split("-", 3)
            environ = dict(line.split("=", 1) for line in
                           Path(base + ".env").read_text().splitlines() if "=" in line)
            env = {k: v for k, v in environ.items() if k.startswith("CNI_")}
            stdin, stdout = Path(base + ".stdin").read_text(), Path(base + ".stdout").read_text()
            calls.append({"command": command, "plugin": plugin, "env": env, "environ": environ,
                          "stdin": json.loads(stdin) if stdin.strip() else None,
                          "stdout": json.loads(stdout) if stdout.strip() else None,
                          "rc": int(rc.read_text())})
        return calls


def _readline(p: subprocess.Popen, limit: float) -> str:
    """The first line of p's stdout within `limit` seconds ("" if p ended or took longer)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ready, _, _ = select.select([p.stdout], [], [], 0.1)
        if ready:
            return p.stdout.readline()
        if p.poll() is not None:
            return ""
    return ""


def _wait(pred, limit: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + limit
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
