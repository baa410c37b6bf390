"""The repository layout: it never shadows the standard library's `inspect`, the hot
loops take their numbers from vtep.wire and vtep.inet, and the README's commands are
the ones CI runs."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_no_inspect_package_marker():
    assert not (ROOT / "inspect" / "__init__.py").exists()


def test_import_inspect_from_repo_root_is_stdlib():
    out = subprocess.run(
        [sys.executable, "-c", "import inspect, sys; print(inspect.__file__); "
         "print(hasattr(inspect, 'signature'))"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "True"
    assert not out[0].startswith(str(ROOT)), out[0]


# The two hot loops and the decoder's slow paths: the VXLAN numbers they test come from
# vtep.wire, the IP ones from vtep.inet, never as literals of their own.
HOT_LOOPS = [ROOT / "vtep" / "datapath.py"] + [
    ROOT / "inspect" / "vxinspect" / f"{m}.py"
    for m in ("decode", "inner", "outer", "ipv6ext", "linktypes", "fragments", "plancheck")]
# VXLAN ports, header words and masks (RFC 7348 section 5): the I flag's word, its
# reserved bits, the I flag in a 64-bit header word; ethertypes; IPv4 fragment bits
FORBIDDEN = re.compile(r"\b(4789|8472|0x0*8000000(0{8})?|0xf7ffffff|0x0*800|0x86dd|0x0*806"
                       r"|0x3fff|0x1fff|0x2000|0x4000)\b", re.IGNORECASE)


def test_vxinspect_uses_the_shared_wire_module():
    # The wire format is written once, in vtep.wire; the inspector imports it.
    src = (ROOT / "inspect" / "vxinspect" / "decode.py").read_text()
    assert "from vtep import inet, wire" in src


@pytest.mark.parametrize("path", HOT_LOOPS, ids=lambda p: p.name)
def test_hot_loops_take_their_numbers_from_wire_and_inet(path):
    found = [(n, m.group()) for n, line in enumerate(path.read_text().splitlines(), 1)
             for m in FORBIDDEN.finditer(line)]
    assert not found, f"{path.name}: literals that vtep.wire / vtep.inet name: {found}"


def test_the_forbidden_literals_are_caught():
    # the pattern itself, on the literals the hot loops used to carry
    for text in ("w0 != 0x08000000", "0x08000000 << 32", "w0 & 0xF7FFFFFF", "et == 0x0800",
                 "et == 0x86DD", "ETH_ARP = 0x0806", "frag & 0x3FFF", "frag & 0x1FFF",
                 "frag & 0x2000", "not frag & 0x4000", "dport=4789", "port == 8472",
                 "0x0800000000000000"):
        assert FORBIDDEN.search(text), text
    for text in ("wire.FLAGS_WORD_I", "0x08", "0xFF", "0x45", "14789", "0x80000"):
        assert not FORBIDDEN.search(text), text


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_exactly_two_commands_and_ci_runs_the_second():
    cmds = _readme_commands()
    assert len(cmds) == 2
    assert all(c.startswith("sh bootstrap.sh && ") for c in cmds)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert cmds[1] in ci, ".ci/run must run the README's test command verbatim"
