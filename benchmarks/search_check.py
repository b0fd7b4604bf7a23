"""Does the search for blocks:N pay? For the default grids on v100-32gb (1 and 4 GPUs) and
a100-40gb, per fidelity (or cycle) x backbone x batch x precision: the fastest fitting
policy of everything the planner estimated (the grid's none/block/chunk:4 and the
search's blocks:N) against the fastest fitting of none/block/chunk:K alone.

    python benchmarks/search_check.py [--targets v100-32gb:1,v100-32gb:4,a100-40gb:1]

Prints, per target: groups where something fits, groups where a partial policy
(blocks:N, N below the number of blocks) fits and none does not, how many of those the
search made strictly faster, the median time ratio there, any group where it is slower
(the check fails), and the plan's chosen candidate against the best fixed policy of
its fidelity, backbone and batch. Exit status 1 when the check fails. Traces come from
the trace cache ($LOFI_CACHE), so a second target costs replays only.

    python benchmarks/search_check.py --targets v100-32gb:1 --batchnorm partial --brute

`--brute` also estimates every N for the chosen candidate's group and prints each
policy's memory and time, whether memory falls with N, and whether the search's N is
the smallest that fits. `--batchnorm partial` plans as `lofi plan` does by default.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace

from lofi.plan_axes import LOFI_AXES, describe
from lofi.plan_workload import lofi_workload
from planner.estimate import estimate_grid
from planner.grid import GridSpec
from planner.planning import PlanRequest, estimate_and_rank
from planner.hardware.profiles import get_profile
from planner.workload import step_specs

FIXED = ("none", "block", "chunk")


def check(gpu: str, gpus: int, batchnorm: str = "frozen", brute: bool = False) -> bool:
    profile = get_profile(gpu)
    request = PlanRequest(GridSpec(LOFI_AXES, gpus=gpus, batchnorm=batchnorm), profile)
    start = time.perf_counter()
    estimates, ranking = estimate_and_rank(request, lofi_workload())
    seconds = time.perf_counter() - start
    usable = ranking.usable_bytes
    groups: dict = {}
    for e in estimates:
        groups.setdefault(replace(e.candidate, checkpointing="none"), []).append(e)

    def epoch(e) -> float:
        return e.time.seconds_per_epoch

    fitting_groups = partial_groups = faster = 0
    ratios, failures = [], []
    for key, members in groups.items():
        fits = [e for e in members if e.memory.total <= usable]
        if not fits:
            continue
        fitting_groups += 1
        best = min(fits, key=epoch)
        fixed = [e for e in fits if e.candidate.policy.kind in FIXED]
        none_fits = any(e.candidate.checkpointing == "none" for e in fits)
        partial = [e for e in fits if e.candidate.policy.kind == "blocks"]
        if fixed and epoch(best) > epoch(min(fixed, key=epoch)):
            failures.append(f"slower than a fixed policy: {describe(best.candidate)}")
        if partial and not none_fits:
            partial_groups += 1
            reference = min(fixed, key=epoch) if fixed else None
            if reference is not None and epoch(best) < epoch(reference):
                faster += 1
                ratios.append(epoch(best) / epoch(reference))
            else:
                failures.append(f"a partial policy fits but nothing is faster than {describe(reference.candidate)}"
                                if reference else f"no fixed policy fits: {describe(best.candidate)}")
    chosen = ranking.chosen
    print(f"{gpu} x {gpus}: {len(estimates)} estimates ({len(estimates) - sum(1 for e in estimates if e.candidate.policy.kind != 'blocks')} "
          f"from the search), planned in {seconds:.0f} s")
    print(f"  groups (fidelity x backbone x batch x precision) where something fits: {fitting_groups}")
    print(f"  groups where blocks:N fits and none does not: {partial_groups}; strictly faster than the best of "
          f"none/block/chunk:K: {faster}" + (f" (time per epoch x{statistics.median(ratios):.3f} median, "
                                              f"x{min(ratios):.3f} best)" if ratios else ""))
    if chosen is not None:
        same = [e for e in groups[replace(chosen.candidate, checkpointing="none")]
                if e.candidate.policy.kind in FIXED and e.memory.total <= usable]
        reference = min(same, key=epoch) if same else None
        print(f"  chosen: {describe(chosen.candidate)}, {epoch(chosen.estimate) / 3600:.2f} h per epoch; best fixed "
              f"policy there: " + (f"{reference.candidate.checkpointing}, {epoch(reference) / 3600:.2f} h" if reference
                                   else "none fits"))
        if reference is not None and epoch(chosen.estimate) > epoch(reference):
            failures.append("the chosen candidate is slower than a fixed policy of its group")
        if brute and chosen.candidate.policy.kind == "blocks":
            failures += brute_force(chosen.candidate, profile, usable)
    for failure in failures:
        print(f"  FAIL: {failure}")
    print(f"  check: {'passed' if not failures else 'FAILED'}")
    return not failures


def brute_force(chosen, profile, usable: int) -> list[str]:
    """Every N for the chosen candidate's group: is the chosen N the smallest that fits?"""
    count = len(lofi_workload().block_savings(step_specs(chosen, "cuda")[0].model))
    policies = ["none", *(f"blocks:{n}" for n in range(1, count + 1))]
    found = estimate_grid([replace(chosen, checkpointing=p) for p in policies], lofi_workload(), profile,
                          videos_per_epoch=LOFI_AXES.videos_per_epoch)
    totals = [e.memory.total for e in found]
    for e in found:
        print(f"    {e.candidate.checkpointing:>9}: {e.memory.total / 2**30:6.2f} GiB, "
              f"{e.time.seconds_per_epoch / 3600:.3f} h{'  fits' if e.memory.total <= usable else ''}")
    rises = [(policies[i + 1], (b - a) / 2**30) for i, (a, b) in enumerate(zip(totals, totals[1:])) if b > a]
    print("    memory falls with N" if not rises else
          "    memory rises at " + ", ".join(f"{p} (+{gib:.3f} GiB)" for p, gib in rises) + " over the N before")
    smallest = next(p for p, e in zip(policies, found) if e.memory.total <= usable)
    print(f"    smallest fitting: {smallest}; the search chose {chosen.checkpointing}")
    return [] if smallest == chosen.checkpointing else [f"brute force: {smallest} fits, the search chose {chosen.checkpointing}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="v100-32gb:1,v100-32gb:4,a100-40gb:1",
                        help="GPU profile:GPUs per node, comma separated")
    parser.add_argument("--batchnorm", default="frozen", choices=("frozen", "trained", "partial"))
    parser.add_argument("--brute", action="store_true", help="estimate every N for the chosen group")
    args = parser.parse_args()
    results = []
    for target in args.targets.split(","):
        gpu, _, gpus = target.partition(":")
        results.append(check(gpu, int(gpus or 1), args.batchnorm, args.brute))
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
