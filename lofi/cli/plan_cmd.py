"""`lofi plan`: which LoFi training configuration is best on this hardware (or on the
hardware you name), why, and what it costs; writes plan.json for `lofi train`."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from planner.candidate import OPTIMIZERS

ACTIVITYNET_TRAINING_VIDEOS = 9649  # ActivityNet-1.3 training videos (shared/data/README.md)
ACTIVITYNET_SOURCE = "ActivityNet-1.3 training; --videos or --annotations to change"
MEASURE_FINALISTS = 3  # `--measure` runs the chosen candidate and the next two that fit


@click.command()
@click.option("--gpus", type=int, default=1, show_default=True, help="GPUs per node.")
@click.option("--nodes", type=int, default=1, show_default=True, help="Nodes.")
@click.option("--gpu", "gpu_name", default="auto", show_default=True,
              help="A profile name (`lofi gpus` lists them), or auto: the GPU here, else v100-32gb.")
@click.option("--tr", multiple=True, help="Snippets per video, e.g. 25,50; with --sr every TR x SR pair.")
@click.option("--sr", multiple=True, help="Frame size in pixels, e.g. 112,224.")
@click.option("--fidelity", "fidelity_names", multiple=True, help="Named fidelities: full, S, T, ST, low, C (C-LoFi).")
@click.option("--backbones", multiple=True, help="tsm_r18, tsm_r34, tsm_r50 (comma list).")
@click.option("--head", type=click.Choice(["gtad", "bmn"]), default="gtad", show_default=True)
@click.option("--batch", multiple=True, help="Batch sizes per GPU to try (default 1,2,4,8,16).")
@click.option("--precision", multiple=True, help="fp32, fp16, bf16 (default: all the GPU supports).")
@click.option("--checkpointing", multiple=True, help="none, blocks:N, block, chunk:K (default none,block,chunk:4; the planner adds the smallest blocks:N that fits where none does not).")
@click.option("--global-batch", type=int, default=16, show_default=True, help="Videos per optimizer step (paper: 16).")
@click.option("--no-accumulation", is_flag=True, help="Reach the global batch in one step (batch x GPUs = global batch).")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="sgd", show_default=True,
              help="sgd: the paper's (momentum 0, no state); adam adds two states.")
@click.option("--margin", type=float, default=0.10, show_default=True, help="Memory kept free, as a fraction.")
@click.option("--videos", type=int, help="Training videos per epoch (for the time per epoch).")
@click.option("--annotations", type=click.Path(path_type=Path, dir_okay=False),
              help="ActivityNet-format JSON: count its training videos.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default="plan.json", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the plan document on stdout and nothing else there.")
@click.option("--measure", is_flag=True, help="Run the finalists for real on this GPU (one subprocess each).")
@click.option("--all", "show_all", is_flag=True, help="Show every candidate, not only the best of each configuration.")
@click.option("--max-epoch-hours", type=float, help="Time budget: reject candidates estimated slower per epoch.")
@click.option("--allocator", type=click.Choice(["default", "expandable", "both"]), default="default", show_default=True,
              help="PyTorch's caching allocator settings to plan for: expandable = "
                   "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True; both = try each.")
@click.option("--batchnorm", type=click.Choice(["partial", "frozen", "trained"]), default="partial", show_default=True,
              help="BatchNorm in training: partial (TSM's partialBN, lofi train's default for pre-trained "
                   "weights), frozen (statistics fixed, affine trained) or trained (random init).")
def plan(gpus, nodes, gpu_name, tr, sr, fidelity_names, backbones, head, batch, precision, checkpointing,
         global_batch, no_accumulation, optimizer, margin, videos, annotations, out, as_json, measure, show_all,
         max_epoch_hours, allocator, batchnorm) -> None:
    """Estimate every candidate configuration, pick the best that fits, write plan.json."""
    from lofi.cli.console import console, err_console, writable
    from lofi.cli.plan_render import gather_report, render_report, report_from_plan
    from planner.choose import require_choice, usable_bytes
    from planner.grid import GridSpec, parse_ints, parse_list, select_fidelities
    from planner.nvml import resolve_target
    from planner.plan_file import Hardware, entries_from_ranking, plan_to_dict, save_plan
    from planner.planning import PlanRequest, plan_from_request
    from planner.profiles import list_profiles

    fidelities, cycles = select_fidelities(parse_ints(tr, "--tr"), parse_ints(sr, "--sr"), parse_list(fidelity_names, "--fidelity"))
    spec = GridSpec(
        fidelities=fidelities,
        cycles=cycles,
        backbones=tuple(parse_list(backbones, "--backbones")) or GridSpec.backbones,
        head=head,
        batches=tuple(parse_ints(batch, "--batch")) or GridSpec.batches,
        precisions=tuple(parse_list(precision, "--precision")) or None,
        checkpointing=tuple(parse_list(checkpointing, "--checkpointing")) or GridSpec.checkpointing,
        global_batch=global_batch,
        accumulation=not no_accumulation,
        gpus=gpus,
        nodes=nodes,
        optimizer=optimizer,
        expandable_segments={"default": (False,), "expandable": (True,), "both": (False, True)}[allocator],
        batchnorm=batchnorm,
    )
    writable(out, "--out")  # before the planning work, not after it
    target = resolve_target(gpu_name, list_profiles(), gpus=gpus)
    profile = target.profile
    usable = usable_bytes(profile, margin)
    videos_per_epoch, dataset = _dataset_size(videos, annotations)
    request = PlanRequest(spec, profile, margin=margin, videos_per_epoch=videos_per_epoch, dataset=dataset,
                          detected=target.detected, notices=target.notices,
                          max_seconds_per_epoch=None if max_epoch_hours is None else max_epoch_hours * 3600)
    for notice in target.notices:
        err_console.print(f"[yellow]note:[/] {notice}", highlight=False)
    if measure and not target.detected:
        from planner.errors import PlannerError

        reason = target.detection.reason if target.detection is not None else f"--gpu {gpu_name} names a profile"
        raise PlannerError(f"--measure needs a GPU here and --gpu auto ({reason})")

    estimates, ranking = _estimate(request, err_console)
    if ranking.chosen is None:
        if not as_json:
            report = gather_report(
                hardware=Hardware(profile.name, profile.display_name, profile.memory_bytes, profile.kind, target.detected),
                gpus=gpus, nodes=nodes, margin=margin, usable_bytes=usable, global_batch=global_batch,
                videos_per_epoch=videos_per_epoch, dataset=dataset, entries=entries_from_ranking(ranking),
                why=None, show_all=show_all,
            )
            render_report(report, console)
        require_choice(ranking, profile, spec)  # raises NothingFits: exit code 3

    measured = {}
    if measure:
        ranking, measured = _measure(request, ranking, estimates, err_console)
    result = plan_from_request(request, ranking, measured)
    path = save_plan(result, out)
    if as_json:
        click.echo(json.dumps(plan_to_dict(result), indent=2))
        err_console.print(f"wrote {path}", highlight=False)
        return
    report = report_from_plan(result, show_all=show_all)
    render_report(dataclasses.replace(report, notices=()), console)  # notices went to stderr already
    console.print(f"Wrote [bold]{path}[/] (what `lofi train` reads).", highlight=False)


def _dataset_size(videos: int | None, annotations: Path | None) -> tuple[int, str]:
    """(training videos per epoch, where that number comes from)."""
    from lofi.errors import OptionError

    if videos is not None and annotations is not None:
        raise OptionError("give --videos or --annotations, not both")
    if videos is not None:
        if videos < 1:
            raise OptionError(f"--videos must be >= 1, got {videos}")
        return videos, "--videos"
    if annotations is not None:
        from lofi.data.annotations import load_annotations

        count = len(load_annotations(annotations, subsets=["training"]).records)
        if count == 0:
            raise OptionError(f"{annotations}: no video in the training subset")
        return count, f"the training subset of {annotations}"
    return ACTIVITYNET_TRAINING_VIDEOS, ACTIVITYNET_SOURCE


def _estimate(request, err_console):
    """Trace every candidate (fake tensors, no GPU memory) with a progress bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lofi.plan_workload import lofi_workload
    from planner.planning import estimate_and_rank

    columns = (TextColumn("tracing candidates"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("trace", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return estimate_and_rank(request, lofi_workload(), progress=advance)


def _measure(request, ranking, estimates, err_console):
    """Run the finalists for real; candidates that run out of memory stop fitting."""
    from planner.choose import describe, rank_candidates, usable_bytes
    from planner.measure import measure_candidates
    from planner.quality import load_evidence

    finalists = [r for r in ranking.ranked if r.fits][:MEASURE_FINALISTS]

    def report(candidate, result):
        state = "OOM" if result.oom else (f"error: {result.error}" if result.error else f"{(result.nvml_used_bytes or 0) / 2**30:.1f} GiB used")
        err_console.print(f"measured {describe(candidate)}: {state}", highlight=False)

    command = [sys.executable, "-m", "lofi.measure_step"]
    results = measure_candidates([r.candidate for r in finalists], command, on_result=report)
    oom = {r.candidate for r, m in zip(finalists, results) if m.oom}
    reranked = rank_candidates(estimates, usable_bytes(request.profile, request.margin), load_evidence(), oom=oom,
                               max_seconds_per_epoch=request.max_seconds_per_epoch)
    by_candidate = {r.candidate: m for r, m in zip(finalists, results)}
    measured = {r.rank: by_candidate[r.candidate] for r in reranked.ranked if r.candidate in by_candidate}
    return reranked, measured
