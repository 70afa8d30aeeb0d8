"""Mutation testing of the modules that hold the rules, with mutmut (the version in constraints.txt).

Each group is one module, the unit tests that check its rules, and the functions that hold them
(a module's other functions are mutated too, but not counted: I/O and glue are the e2e tests' job).
For each group the checkout's ``supervisor/`` and ``tests/`` are copied into a work folder, mutmut
runs there (niced, unit tests only), and the score is printed: killed / counted mutants. A mutant
whose function no selected test reaches counts as surviving.

    scripts/mutation.sh                    # every group (about 40 minutes on 2 cores)
    scripts/mutation.sh slots durations    # some groups
    scripts/mutation.sh --quick            # what CI runs: the small, fast groups, each held to its floor

docs/mutation.md records the scores and what each surviving mutant is.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Group:
    name: str
    module: str              # the file mutated
    tests: tuple[str, ...]   # the unit tests run against each mutant
    functions: str           # regex on mutmut's function part of a mutant name: the ones counted
    floor: float = 0.85      # the score below which --quick fails
    pytest_args: tuple[str, ...] = ()  # more pytest arguments (one per item)
    only: tuple[str, ...] = ()         # mutant-name globs: test only these (the counted functions of a big file)


GROUPS = [
    Group("policy", "supervisor/policy.py", ("tests/unit/test_policy.py",), r".*"),
    Group("placement", "supervisor/placement.py", ("tests/unit/test_placement.py",), r".*"),
    Group("contract", "supervisor/contract.py", ("tests/unit/test_contract.py",), r".*"),
    Group("edit", "supervisor/jobs/edit.py", ("tests/unit/test_edit.py",), r".*"),
    Group("durations", "supervisor/jobs/spec.py", ("tests/unit/test_durations.py",), r"x_parse_duration$",
          only=("supervisor.jobs.spec.x_parse_duration__mutmut_*",)),
    # the trim's rules; writing the file (fsync, owner and mode as root) is the e2e tests' part
    Group("results_csv", "supervisor/results_csv.py", ("tests/unit/test_results_csv.py",),
          r"x_(read_epochs|trim_after)$|x__(backup|keep|parse|epoch|terminated)$",
          pytest_args=("-k", "not test_real_results_csv")),  # synthetic files only: no training to wait for
    # the verifier: zip records and CRCs, the restricted unpickling, the classification, the mid-epoch
    # record's checks (display helpers and the cache are not counted)
    Group("checkpoint", "supervisor/probes/checkpoint.py", ("tests/unit/test_checkpoint.py", "tests/unit/test_midepoch.py"),
          r"x__(check_record|classify|corrupt|crc_range|data_offset|midepoch_record|not_a_zip|read_verified|"
          r"safe_unpickle)$|x_inspect_checkpoint$|xǁ_SafeUnpicklerǁ",
          only=tuple(f"supervisor.probes.checkpoint.{f}__mutmut_*" for f in (
              "x__check_record", "x__classify", "x__corrupt", "x__crc_range", "x__data_offset",
              "x__midepoch_record", "x__not_a_zip", "x__read_verified", "x__safe_unpickle",
              "x_inspect_checkpoint", "xǁ_SafeUnpicklerǁ*"))),
    Group("midepoch", "supervisor/child/midepoch.py", ("tests/unit/test_midepoch.py",),
          r"xǁMidEpochǁ(_resume_pass|enumerate_start|due|save|epoch_saved)$",
          only=tuple(f"supervisor.child.midepoch.{f}__mutmut_*" for f in (
              "xǁMidEpochǁ_resume_pass", "xǁMidEpochǁenumerate_start",
              "xǁMidEpochǁdue", "xǁMidEpochǁsave", "xǁMidEpochǁepoch_saved"))),
    Group("sample_order", "supervisor/child/sample_order.py", ("tests/unit/test_midepoch.py",),
          r"xǁPassOrderǁ|x_pass_batches$",
          only=tuple(f"supervisor.child.sample_order.{f}__mutmut_*" for f in ("xǁPassOrderǁ*", "x_pass_batches"))),
    Group("slots", "supervisor/control/server.py", ("tests/unit/test_slots.py",), r"xǁ_Slotsǁ",
          only=("supervisor.control.server.xǁ_Slotsǁ*",)),
]
QUICK = ("slots", "durations", "results_csv")  # CI: about 2 minutes together
MUTANT = re.compile(r"^\s*(?P<module>[\w.]+)\.(?P<function>[^.\s]+)__mutmut_(?P<n>\d+): (?P<status>.+)$")


def run_group(group: Group, work: Path, children: int, checkpoints: Path,
              recount: bool = False) -> tuple[int, int, list[str]]:
    """(killed, counted, surviving mutant names) of ``group``; ``recount``: from the last run's results."""
    folder = work / group.name
    if recount:
        return count(group, folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for part in ("supervisor", "tests"):
        shutil.copytree(ROOT / part, folder / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", folder / "pyproject.toml")  # pytest's settings; no [tool.mutmut]
    (folder / "setup.cfg").write_text(
        "[mutmut]\nsource_paths = supervisor\n"
        f"only_mutate = {group.module}\n"
        "pytest_add_cli_args_test_selection =\n" + "".join(f"    {t}\n" for t in group.tests) +
        "pytest_add_cli_args =\n    -p\n    no:cacheprovider\n" + "".join(f"    {a}\n" for a in group.pytest_args))
    env = dict(os.environ, YOLO_SUPERVISOR_TEST_CHECKPOINTS=str(checkpoints))
    env.pop("PYTHONPATH", None)  # the mutants' copy, not the checkout, must be what the tests import
    mutmut = Path(sys.executable).with_name("mutmut")
    log = folder / "mutmut.log"
    with open(log, "w") as out:
        done = subprocess.run(["nice", "-n", "10", str(mutmut), "run", "--max-children", str(children), *group.only],
                              cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"mutmut failed on {group.name} (exit {done.returncode}): see {log}")
    return count(group, folder)


def count(group: Group, folder: Path) -> tuple[int, int, list[str]]:
    mutmut = Path(sys.executable).with_name("mutmut")
    listed = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=folder,
                            capture_output=True, text=True, check=True).stdout
    counted = [m for m in map(MUTANT.match, listed.splitlines())
               if m and re.match(group.functions, m["function"])]
    survivors = [f"{m['function']}__mutmut_{m['n']}: {m['status']}" for m in counted if m["status"] != "killed"]
    return len(counted) - len(survivors), len(counted), survivors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="*", help=f"of {', '.join(g.name for g in GROUPS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help=f"CI's subset ({', '.join(QUICK)}), held to floors")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "yolo-supervisor-mutation")
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--survivors", action="store_true", help="list every surviving mutant")
    parser.add_argument("--recount", action="store_true", help="count the last run's results again, run nothing")
    args = parser.parse_args()
    names = QUICK if args.quick else (args.groups or [g.name for g in GROUPS])
    unknown = set(names) - {g.name for g in GROUPS}
    if unknown:
        parser.error(f"unknown groups: {sorted(unknown)}")
    checkpoints = args.work / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    below = []
    print(f"{'group':<12} {'module':<34} {'killed':>7} {'counted':>8} {'score':>7}")
    for group in (g for g in GROUPS if g.name in names):
        killed, counted, survivors = run_group(group, args.work, args.children, checkpoints, args.recount)
        score = killed / counted if counted else 0.0
        print(f"{group.name:<12} {group.module:<34} {killed:>7} {counted:>8} {score:>7.1%}", flush=True)
        if args.survivors or args.quick:
            for s in survivors:
                print(f"    survived: {s}")
        if score < group.floor:
            below.append(f"{group.name} {score:.1%} < {group.floor:.0%}")
    if below and args.quick:
        print(f"mutation score below its floor: {', '.join(below)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
