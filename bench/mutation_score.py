#!/usr/bin/env python3
"""Mutation score of the unit tests over the modules where a wrong bit is a wrong packet.

    .venv/bin/python bench/mutation_score.py [MODULE ...] [--jobs N] [--out DIR]
                                             [--rev REV] [--workdir DIR] [--keep | --report]

MODULE is a short name from MODULES below (wire checksum icmp state checks
plancheck capture plan nlmsg netlink datapath decode outer linktypes ipv6ext
fragments inner); none means all, in that
order (small and fast first; one mutmut run per module, so a run cut short
still scores whole modules, and --keep goes on with the rest).

What it does (no root, never writes into the repository):

1. Copies the repository into a scratch directory (--workdir, default
   /tmp/vtep-mutation/tree): the working tree's tracked and untracked,
   not-ignored files, or with --rev the files of that commit. mutmut 3 writes
   only into ./mutants of the directory it runs in, but a copy keeps even that
   out of a tree other people are editing.
2. Lays inspect/vxinspect out as a top-level vxinspect/ in the copy. mutmut
   names a mutant after the file's path (inspect/vxinspect/decode.py would be
   "inspect.vxinspect.decode") and its trampoline activates a mutant only when
   that name equals the function's __module__ ("vxinspect.decode"): without
   this every vxinspect mutant would "survive" untested. inspect/ stays too,
   for the tests that read its files.
3. Runs `python -m mutmut run` there against the UNIT tests only
   (-m "not netns"; tests/test_packaging.py is left out: it builds and
   installs wheels, kills nothing the others do not, and takes minutes).
   CI is removed from the environment (in CI a skip fails the run, and a
   machine without ../shared skips the external-capture tests).
   Tests that run `python -m vxinspect` in a subprocess run the copy's
   original code (PYTHONPATH): mutmut maps mutants to the tests that reach
   their function in-process, so a kill that only a CLI test would make is
   not counted; the score measures the in-process unit tests.
4. Prints per module: mutants, killed (a timeout counts as killed), survived,
   no tests (no unit test reaches the function: netlink's Rtnl and Events
   talk to a kernel, which only the netns tests have), the score
   killed / (killed + survived + no tests) and the "reached" score
   killed / (killed + survived); then the survivors counted by kind of change
   (number, comparison, argument removed, ...) and by function, and each
   with its diff. With --out DIR, writes DIR/<module>.txt: one survivor per
   block, its name, status, kind and diff.

Slow: each mutant reruns the tests that reach its function (4,600 mutants;
the whole set took about 75 minutes on 2 busy cores).
Not part of CI. Exit status 0 when it ran, 2 on bad usage, 1 if mutmut failed
(its log: <workdir>/mutmut.log).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# short name -> path inside the scratch copy (vxinspect laid out at the top, see 2. above).
# checks.py is data only (the check table); mutmut mutates function bodies, so
# it yields no mutants; plancheck.py holds the plan-mismatch check's logic.
MODULES = {
    "wire": "vtep/wire.py",
    "checksum": "vtep/checksum.py",
    "icmp": "vtep/icmp.py",
    "state": "vtep/state.py",
    "checks": "vxinspect/checks.py",
    "plancheck": "vxinspect/plancheck.py",
    "capture": "vxinspect/capture.py",
    "plan": "vtep/plan.py",
    "nlmsg": "vtep/nlmsg.py",
    "netlink": "vtep/netlink.py",
    "datapath": "vtep/datapath.py",
    # the decoder: its fast path, then the slow paths it hands rare packets to (issue 9)
    "decode": "vxinspect/decode.py",
    "outer": "vxinspect/outer.py",
    "linktypes": "vxinspect/linktypes.py",
    "ipv6ext": "vxinspect/ipv6ext.py",
    "fragments": "vxinspect/fragments.py",
    "inner": "vxinspect/inner.py",
}

PYTEST_ARGS = ["-m", "not netns", "-p", "no:cacheprovider",
               "--ignore=tests/test_packaging.py"]
ALSO_COPY = ["inspect/", "pcaps/", "README.md", ".ci/"]

KILLED = {1, 3, 36, -24, 24, 152, 255}      # mutmut: test failure, pytest error, timeouts
TIMEOUT = {36, -24, 24, 152, 255}
SURVIVED = {0}
NO_TESTS = {5, 33}


def copy_tree(repo: Path, rev: str | None, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if rev:
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    else:
        files = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached",
                                "--others", "--exclude-standard"],
                               capture_output=True, check=True).stdout.split(b"\0")
        for name in filter(None, files):
            src = repo / os.fsdecode(name)
            if src.is_file():       # listed but deleted in the working tree: skip
                (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / os.fsdecode(name))
    shutil.copytree(dest / "inspect" / "vxinspect", dest / "vxinspect")
    # tests find the external captures at <repo>/../shared; from mutants/tests
    # that is <copy>/shared
    shared = repo.parent / "shared"
    if shared.is_dir():
        (dest / "shared").symlink_to(shared)


def toml_list(items) -> str:
    return "[" + ", ".join(json.dumps(str(i)) for i in items) + "]"


def write_config(tree: Path, paths: list[str]) -> None:
    pyproject = tree / "pyproject.toml"
    text = pyproject.read_text()
    text = re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[|\Z)", "", text)
    text += ("\n[tool.mutmut]\n"
             f"source_paths = {toml_list(['vtep/', 'vxinspect/'])}\n"
             f"only_mutate = {toml_list(paths)}\n"
             f"also_copy = {toml_list(ALSO_COPY)}\n"
             f"pytest_add_cli_args = {toml_list(PYTEST_ARGS)}\n"
             f"pytest_add_cli_args_test_selection = {toml_list(['tests'])}\n"
             # a mutant that loops forever is stopped after 10 times (mutmut's
             # default: 30 times) the CPU time its tests took unmutated, plus 10 s:
             # capture.py's read loops made timeouts most of a run's wall time
             "timeout_multiplier = 5.0\n"
             "timeout_constant = 1.0\n")
    pyproject.write_text(text)


def run_mutmut(tree: Path, jobs: int, log: Path, glob: str) -> int:
    env = dict(os.environ)
    env.pop("CI", None)
    env.pop("MUTANT_UNDER_TEST", None)
    # Subprocesses (`python -m vxinspect` in a test, run from mutants/) import
    # the copy's original code: mutmut cannot credit a child's kill to the test
    # anyway, and a mutated module holds every mutant of each function (decode.py
    # grows to 24 MB, 19 s to compile in each child: mutmut writes no .pyc).
    # PYTHONSAFEPATH keeps `-m` from putting the child's cwd (mutants/) first;
    # mutmut drops PYTHONPATH's entry from its own sys.path (the original must
    # not shadow the mutants) and puts mutants/ there itself.
    env["PYTHONPATH"] = str(tree)
    env["PYTHONSAFEPATH"] = "1"
    with open(log, "ab") as out:
        return subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), glob],
                              cwd=tree, env=env, stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT).returncode


def results(tree: Path, paths: list[str]) -> dict[str, dict[str, int | None]]:
    out = {}
    for p in paths:
        meta = tree / "mutants" / (p + ".meta")
        out[p] = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    return out


DIFF_HELPER = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
out = {}
for path, name in json.load(sys.stdin):
    try:
        out[name] = get_diff_for_mutant(name, path=path)
    except Exception as e:
        out[name] = f"(no diff: {e!r})"
json.dump(out, sys.stdout)
"""


def diffs(tree: Path, wanted: list[tuple[str, str]]) -> dict[str, str]:
    if not wanted:
        return {}
    r = subprocess.run([sys.executable, "-c", DIFF_HELPER], cwd=tree, input=json.dumps(wanted),
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def function_of(mutant: str, diff: str = "", source: list[str] | None = None) -> str:
    """vtep.netlink.xǁRtnlǁapply__mutmut_3 -> Rtnl.apply; vtep.wire.x_pack__mutmut_5 -> pack;
    a change inside a nested function (decode's make_decoder holds the whole
    decoder as closures) -> make_decoder.vxlan, found from the diff's line
    number within the function and the original source."""
    f = mutant.partition("__mutmut_")[0].rpartition(".")[2]
    name = f[2:] if f.startswith("x_") else ".".join(filter(None, f[1:].split("\u01c1")))
    hunk = re.search(r"^@@ -(\d+)", diff, re.M)
    if not (hunk and source):
        return name
    rel = int(hunk.group(1))       # the diff's old side: line 1 is the function's def
    for line in diff[hunk.end():].splitlines()[1:]:
        if line.startswith("-"):
            break
        if not line.startswith("+"):
            rel += 1
    short = name.rpartition(".")[2]
    starts = [i for i, ln in enumerate(source) if re.match(rf"\s*(async )?def {re.escape(short)}\(", ln)]
    if len(starts) != 1:
        return name
    top = starts[0]
    indent = len(source[top]) - len(source[top].lstrip())
    at = min(top + rel - 1, len(source) - 1)
    for i in range(at, top, -1):
        m = re.match(r"(\s*)(?:async )?def (\w+)\(", source[i])
        if m and len(m.group(1)) > indent:
            d = len(m.group(1))
            body = [ln for ln in source[i + 1:at + 1] if ln.strip()]
            if all(len(ln) - len(ln.lstrip()) > d for ln in body):
                return f"{name}.{m.group(2)}"
            return name
    return name


def category(diff: str) -> str:
    """A rough name for what a mutant changed, from the one line it changed."""
    old = [ln[1:] for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    new = [ln[1:] for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    if len(old) != 1 or len(new) != 1:
        return "other"
    tok = re.compile(r"0x[0-9a-fA-F]+|\d+(?:\.\d+)?|'[^']*'|\"[^\"]*\"|\w+|[<>=!]=|<<|>>|//|\*\*|\S")
    a, b = tok.findall(old[0]), tok.findall(new[0])
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    j = 0
    while j < min(len(a), len(b)) - i and a[-1 - j] == b[-1 - j]:
        j += 1
    ra, rb = a[i:len(a) - j], b[i:len(b) - j]
    gone, came = " ".join(ra), " ".join(rb)
    if re.match(r"\s*raise\b", old[0]) and "(" in "".join(a[:i]):
        return "error message"
    if re.search(r"\) (and False|or True)\b", new[0]) and not re.search(
            r"\) (and False|or True)\b", old[0]):
        return "condition forced"
    if not rb or not ra:
        return "argument or term removed"
    if all(re.fullmatch(r"\d+(?:\.\d+)?|0x[0-9a-fA-F]+", t) for t in ra):
        return "number"
    if ra[0][:1] in "'\"" or rb[0][:1] in "'\"":
        return "string"
    if {gone, came} <= {"True", "False"}:
        return "True/False"
    if came == "None" or gone == "None":
        return "value -> None"
    if {gone, came} <= {"and", "or"}:
        return "and/or"
    if gone in ("<", "<=", ">", ">=", "==", "!=", "is", "in", "not") or \
            came in ("<", "<=", ">", ">=", "==", "!=", "is", "in", "not"):
        return "comparison"
    if gone in ("+", "-", "*", "/", "//", "%", "<<", ">>", "&", "|", "^", "**", "~"):
        return "arithmetic/bit operator"
    if {gone, came} <= {"break", "continue", "return"}:
        return "break/continue"
    return "other"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("modules", nargs="*", help=f"any of: {' '.join(MODULES)} (default: all)")
    ap.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    ap.add_argument("--out", type=Path, help="write the survivors of each module to DIR/<module>.txt")
    ap.add_argument("--rev", help="test the files of this commit instead of the working tree")
    ap.add_argument("--repo", type=Path, default=REPO)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/vtep-mutation"))
    ap.add_argument("--keep", action="store_true",
                    help="reuse the scratch copy and mutmut's results in --workdir "
                         "(after a run cut short; only unfinished mutants are tested)")
    ap.add_argument("--report", action="store_true",
                    help="run nothing: print (and --out) the results already in --workdir, "
                         "also while another run is still filling them")
    a = ap.parse_args(argv)
    unknown = [m for m in a.modules if m not in MODULES]
    if unknown:
        print(f"mutation_score: unknown module {', '.join(unknown)}; known: {' '.join(MODULES)}",
              file=sys.stderr)
        return 2
    names = a.modules or list(MODULES)
    paths = [MODULES[m] for m in names]
    tree = a.workdir.resolve() / "tree"
    if tree.resolve().is_relative_to(a.repo.resolve()):
        print("mutation_score: --workdir must lie outside the repository", file=sys.stderr)
        return 2
    log = a.workdir.resolve() / "mutmut.log"
    if a.report and not tree.is_dir():
        print(f"mutation_score: nothing to report in {a.workdir}", file=sys.stderr)
        return 2
    if not (a.keep or a.report) or not tree.is_dir():
        copy_tree(a.repo.resolve(), a.rev, tree)
        log.unlink(missing_ok=True)
    if not a.report:
        write_config(tree, paths)

    # One mutmut run per module, in the order given: a run cut short leaves
    # whole modules scored (--keep goes on with the rest). The first run
    # collects which tests reach which function; the others reuse it.
    t0 = time.monotonic()
    for name, p in zip(names, paths):
        if a.report:
            break
        done = results(tree, [p])[p]
        if (tree / "mutants" / (p + ".meta")).exists() and None not in done.values():
            continue
        t = time.monotonic()
        rc = run_mutmut(tree, a.jobs, log, p[:-3].replace("/", ".") + ".*")
        print(f"mutation_score: {name}: mutmut exit {rc}, {time.monotonic() - t:.0f} s",
              file=sys.stderr, flush=True)
    wall = time.monotonic() - t0
    res = results(tree, paths)
    if not any(res.values()):
        print(f"mutation_score: no results; see {log}", file=sys.stderr)
        return 1

    survivors = [(p, k) for p in paths for k, v in res[p].items() if v in SURVIVED | NO_TESTS]
    diff = diffs(tree, survivors)
    print(f"{'module':<10} {'mutants':>7} {'killed':>7} {'survived':>8} {'no tests':>8} "
          f"{'other':>5} {'score':>6} {'reached':>7}")

    def pct(n, d):
        return f"{100 * n / d:5.1f}%" if d else "   -  "

    total, rows = Counter(), []
    for name, p in zip(names, paths):
        codes = list(res[p].values())
        c = Counter(killed=sum(v in KILLED for v in codes), survived=sum(v in SURVIVED for v in codes),
                    notests=sum(v in NO_TESTS for v in codes))
        c["other"] = len(codes) - c["killed"] - c["survived"] - c["notests"]
        c["mutants"] = len(codes)
        total.update(c)
        rows.append((name, c))
    for name, c in [*rows, ("all", total)]:
        print(f"{name:<10} {c['mutants']:>7} {c['killed']:>7} {c['survived']:>8} {c['notests']:>8} "
              f"{c['other']:>5} {pct(c['killed'], c['killed'] + c['survived'] + c['notests']):>6} "
              f"{pct(c['killed'], c['killed'] + c['survived']):>7}")
    print("(score: killed / (killed + survived + no tests); reached: killed / (killed + survived),"
          " the mutants some unit test reaches;")
    print(" other: not checked, suspicious or segfault; "
          + ("" if a.report else f"wall time {wall:.0f} s, {a.jobs} jobs; ")
          + f"mutmut log {log})")

    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
    for name, p in zip(names, paths):
        rows = [(k, "survived" if res[p][k] in SURVIVED else "no tests") for q, k in survivors if q == p]
        cats = Counter(category(diff.get(k, "")) for k, _ in rows)
        source = (tree / p).read_text().splitlines()
        funcs = Counter(function_of(k, diff.get(k, ""), source) for k, _ in rows)
        if rows:
            print(f"\n== {name}: {len(rows)} survivors; by kind: "
                  + ", ".join(f"{c} {n}" for c, n in cats.most_common()))
            print("   by function: " + ", ".join(f"{f} {n}" for f, n in funcs.most_common()))
        text = []
        for k, status in sorted(rows):
            text.append(f"# {k}  [{status}; {category(diff.get(k, ''))}; "
                        f"in {function_of(k, diff.get(k, ''), source)}]\n{diff.get(k, '')}\n")
        for block in text:
            print(block)
        if a.out:
            (a.out / f"{name}.txt").write_text("".join(text) if text else "(no survivors)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
