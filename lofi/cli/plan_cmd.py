"""`lofi plan`: which LoFi training configuration is best on this hardware (or on the
hardware you name), why, and what it costs; writes plan.json for `lofi train`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from planner.candidate import OPTIMIZERS


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
@click.option("--checkpointing", multiple=True, help="none, blocks:N, block, chunk:K or offload, each optionally +head "
              "(default none,block,chunk:4; where none does not fit the planner adds the smallest blocks:N that fits, "
              "and offload).")
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
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False),
              help="Draw the memory-time frontier of the choice into this .png or .svg (needs lofi[plots]).")
def plan(gpus, nodes, gpu_name, tr, sr, fidelity_names, backbones, head, batch, precision, checkpointing,
         global_batch, no_accumulation, optimizer, margin, videos, annotations, out, as_json, measure, show_all,
         max_epoch_hours, allocator, batchnorm, plot) -> None:
    """Estimate every candidate configuration, pick the best that fits, write plan.json."""
    from lofi.cli.console import console, counting, err_console, note, writable
    from lofi.cli.plan_render import render_report
    from lofi.cli.plan_report import report_from_plan, report_from_request
    from lofi.plan_request import OTHER_GPU, check_measurable, plan_lofi, plan_request
    from lofi.plan_axes import LOFI_AXES
    from planner.grid import GridSpec, parse_ints, parse_list, select_fidelities
    from planner.hardware.nvml import resolve_target
    from planner.plan_file import plan_to_dict, save_plan
    from planner.planning import plan_from_request
    from planner.hardware.profiles import list_profiles

    fidelities, cycles = select_fidelities(LOFI_AXES, parse_ints(tr, "tr"), parse_ints(sr, "sr"), parse_list(fidelity_names, "fidelity"))
    spec = GridSpec(
        LOFI_AXES,
        fidelities=fidelities,
        cycles=cycles,
        backbones=tuple(parse_list(backbones, "backbones")) or GridSpec.backbones,
        head=head,
        batches=tuple(parse_ints(batch, "batches")) or GridSpec.batches,
        precisions=tuple(parse_list(precision, "precisions")) or None,
        checkpointing=tuple(parse_list(checkpointing, "checkpointing")) or GridSpec.checkpointing,
        global_batch=global_batch,
        accumulation=not no_accumulation,
        gpus=gpus,
        nodes=nodes,
        optimizer=optimizer,
        expandable_segments={"default": (False,), "expandable": (True,), "both": (False, True)}[allocator],
        batchnorm=batchnorm,
    )
    writable(out, "--out")  # before the planning work, not after it
    if plot is not None:
        from lofi.frontier_plot import check_frontier_plot

        writable(plot, "--plot")
        check_frontier_plot(plot)
    target = resolve_target(gpu_name, list_profiles(), gpus=gpus, fallback_note="the paper's hardware",
                            fallback_hint=OTHER_GPU)
    request = plan_request(spec, target, margin=margin, videos=videos, annotations=annotations,
                           max_epoch_hours=max_epoch_hours)
    for notice in target.notices:
        note(notice)
    if measure:
        check_measurable(target, gpu_name)

    with counting("tracing candidates") as advance:
        outcome = plan_lofi(request, measure=measure, progress=advance, on_measured=_measured)
    if outcome.plan is None:
        if not as_json:
            render_report(report_from_request(request, outcome.ranking, show_all=show_all), console)
        plan_from_request(request, outcome.ranking)  # raises NothingFits: exit code 3
    path = save_plan(outcome.plan, out)
    report = report_from_plan(outcome.plan, show_all=show_all)
    if plot is not None:
        from lofi.cli.plan_frontier import frontier_title
        from lofi.frontier_plot import plot_frontier

        written = plot_frontier(report.frontier, plot, frontier_title(report.frontier))
        err_console.print(f"wrote {written}", highlight=False, soft_wrap=True)
    if as_json:
        click.echo(json.dumps(plan_to_dict(outcome.plan), indent=2))
        err_console.print(f"wrote {path}", highlight=False, soft_wrap=True)
        return
    render_report(dataclasses.replace(report, notices=()), console)  # notices went to stderr already
    console.print(f"Wrote [bold]{path}[/] (what `lofi train` reads).", highlight=False)


def _measured(candidate, result) -> None:
    from lofi.cli.console import err_console
    from lofi.plan_axes import describe

    state = "OOM" if result.oom else (f"error: {result.error}" if result.error
                                      else f"{(result.nvml_used_bytes or 0) / 2**30:.1f} GiB used")
    err_console.print(f"measured {describe(candidate)}: {state}", highlight=False)
