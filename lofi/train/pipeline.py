"""The whole LoFi pipeline of one run: LoFi end to end -> full-fidelity features ->
head -> inference and evaluation (PAPER.md), with the run folder, resume, OOM fallback
and summary.json. The CLI (`lofi train`) only parses options and renders.

Under torchrun every rank runs this function: the LoFi stage data-parallel, features
split over the ranks, head and evaluation on rank 0 while the others wait. Rank 0 alone
writes run-level files (config, plan, metrics, index, results, summary); each hand-off
between stages is a barrier, and whether a stage was interrupted is agreed by all ranks,
so they all stop (or all go on) together."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from lofi.data.annotations import AnnotationSet, VideoRecord, load_annotations
from lofi.data.media import MediaReport, check_media, write_listing
from lofi.data.transforms import Augment
from lofi.errors import CheckpointError, LofiError, OptionError
from lofi.models.heads import build_head
from lofi.train.checkpoint import has_checkpoint, load_checkpoint
from lofi.train.config import TrainConfig, config_to_dict
from lofi.train.distributed import DistContext, agree, barrier, gather
from lofi.train.eval_stage import load_class_scores, predict, write_and_evaluate
from lofi.train.features_stage import extract_features, load_features, read_index
from lofi.train.head_stage import train_head
from lofi.train.initial_model import Videos, baseline_encoder, init_batchnorm, initial_lofi_model, video_dataset
from lofi.train.lofi_stage import (
    OutOfMemoryDuringStage, StageOutcome, check_resumed_config, model_from_checkpoint, run_lofi_stage,
)
from lofi.train.loop import StageHooks, StopRequest, build_loop
from lofi.train.progress import NullProgress, StageProgress
from lofi.train.run_folder import MetricsLog, RunFolder
from planner.atomic_files import atomic_write_json
from planner.candidate import Candidate
from planner.plan import Plan
from planner.plan_file import plan_to_dict, save_plan

STAGES = ("pretrain", "lofi", "features", "head", "eval")


@dataclass(frozen=True)
class RunResult:
    summary: dict[str, Any]
    interrupted: bool


@dataclass(frozen=True)
class RunSetup:
    """The run the stages train: its configuration, plan and folder, and whether it
    continues from its checkpoints."""

    config: TrainConfig
    plan: Plan
    run: RunFolder
    resume: bool = False


@dataclass
class _Summary:
    """Collected while the stages run; written as summary.json at the end."""

    document: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str, **values: Any) -> None:
        self.document.setdefault("stages", {})[name] = values


def run_pipeline(
    config: TrainConfig,
    plan: Plan,
    run: RunFolder,
    context: DistContext,
    *,
    stages: Sequence[str] = STAGES,
    resume: bool = False,
    stop: StopRequest | None = None,
    progress: StageProgress | None = None,
    on_step: Callable[[int], None] | None = None,
) -> RunResult:
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise OptionError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    hooks = StageHooks(context, MetricsLog(run.metrics, enabled=context.is_main), stop or StopRequest(),
                       progress or NullProgress(), on_step)
    setup = RunSetup(config, plan, run, resume)
    if resume and "lofi" in stages and not config.baseline and has_checkpoint(run.lofi_checkpoints):
        loaded = load_checkpoint(run.lofi_checkpoints)  # before config.json is rewritten
        check_resumed_config(loaded.state, config, loaded.path)
        del loaded
    if context.is_main:
        run.create()
        atomic_write_json(run.config, config_to_dict(config))
        save_plan(plan, run.plan)
    barrier(context, "the run folder's creation")
    summary = _Summary({"run": str(run.root), "baseline": config.baseline, "resumed": resume, "stages": {}})
    annotations = load_annotations(config.data.annotations)
    media, report = _media(config, annotations, run, context, hooks.progress)
    summary.document["data"] = {
        "videos": len(annotations.records), "found": len(media), "missing": len(report.missing),
        "unreadable": len(report.unreadable), "clipped_segments": annotations.clipped,
        "dropped_segments": annotations.dropped,
    }
    found = Videos(tuple(r for r in annotations.records if r.video_id in media), media, tuple(annotations.classes))
    training, evaluation = found.subset(config.data.train_subset), found.subset(config.data.eval_subset)
    if not training.records:
        raise OptionError(f"no '{config.data.train_subset}' video of {config.data.annotations} has readable media")
    candidate = plan.chosen
    interrupted = False

    try:
        if "pretrain" in stages and config.pretrain is not None:
            _pretrain(config, training, hooks, summary)
        if "lofi" in stages and not config.baseline:
            outcome, candidate = _lofi_with_fallback(setup, training, hooks, summary)
            interrupted = not outcome.completed
            barrier(context, "the end of the LoFi stage")  # rank 0's last checkpoint is on disk
        if not interrupted and "features" in stages:
            both = replace(found, records=training.records + evaluation.records)
            interrupted = not _features(setup, training, both, hooks, summary)
        if not interrupted and "head" in stages:
            if context.is_main:
                stopped = not _head(setup, training.records, hooks, summary)
            else:
                stopped = hooks.stop.requested  # signalled while waiting: the run stops after the head stage
            interrupted = agree(context, stopped, what="the end of the head stage", handoff=True)[0]
        if not interrupted and "eval" in stages:
            if context.is_main:
                _evaluate(config, evaluation, run, context.device, summary)
            barrier(context, "the end of evaluation")
    except LofiError as error:  # what the finished stages measured is kept, with the error
        summary.document["error"] = str(error)
        _write_summary(run, summary.document, plan, interrupted, context)
        raise
    _write_summary(run, summary.document, plan, interrupted, context)
    return RunResult(summary.document, interrupted)


def _write_summary(run: RunFolder, document: dict[str, Any], plan: Plan, interrupted: bool,
                   context: DistContext) -> None:
    document["interrupted"] = interrupted
    document["plan"] = {"hardware": plan.scope.hardware.name, "chosen": plan_to_dict(plan)["chosen"],
                        "estimated_total_bytes": plan.memory.total}
    if context.is_main:
        _merge_previous(run, document)
        atomic_write_json(run.summary, document)


def _media(config: TrainConfig, annotations: AnnotationSet, run: RunFolder, context: DistContext,
           progress: StageProgress):
    """Find and probe every annotated video once, up front (never fail mid-epoch); list
    what is missing or unreadable. Each rank probes a strided share; every rank gets the
    whole report."""
    share = annotations.records[context.rank::context.world_size]
    progress.start("checking media", len(share))
    done = [0]

    def advance(count: int, total: int) -> None:
        progress.advance(count - done[0])
        done[0] = count

    part = check_media(share, config.data.media_root, frames=config.data.frames,
                       progress=advance, workers=min(4, os.cpu_count() or 1))
    progress.stop()
    report = _merged(gather(context, part, what="the media check"), annotations)
    if context.is_main and (report.missing or report.unreadable):
        write_listing(report, run.root / "media_problems.txt")
    return dict(report.found), report


def _merged(parts: list[MediaReport], annotations: AnnotationSet) -> MediaReport:
    """One report from the ranks' shares, in annotation order (as one process makes it)."""
    if len(parts) == 1:
        return parts[0]
    order = {record.video_id: i for i, record in enumerate(annotations.records)}
    found = {k: v for part in parts for k, v in part.found.items()}
    return replace(
        parts[0],
        found={k: found[k] for k in sorted(found, key=order.__getitem__)},
        missing=tuple(sorted((v for part in parts for v in part.missing), key=order.__getitem__)),
        unreadable=tuple(sorted((u for part in parts for u in part.unreadable), key=lambda u: order[u.video_id])),
        mismatches=tuple(sorted((m for part in parts for m in part.mismatches), key=lambda m: order[m.video_id])),
    )


def _lofi_with_fallback(setup: RunSetup, training: Videos, hooks: StageHooks,
                        summary: _Summary) -> tuple[StageOutcome, Candidate]:
    """The LoFi stage at the plan's choice; after a CUDA OOM on any rank, again from the
    last checkpoint at the plan's next smaller candidate (`Plan.next_smaller`)."""
    config, plan = setup.config, setup.plan
    device = hooks.context.device
    candidate = plan.chosen
    tried: list[Candidate] = []
    fallbacks = []
    while True:
        model = initial_lofi_model(config, candidate, training, device)
        dataset = video_dataset(config, training, candidate.fidelities[0], augment=Augment(flip=config.data.flip))
        parts = build_loop(model, dataset, candidate, config, rank=hooks.context.rank,
                           world_size=hooks.context.world_size, device=device)
        failure: str | None = None
        try:
            outcome = run_lofi_stage(model, dataset, parts, candidate, config, hooks,
                                     checkpoint_dir=setup.run.lofi_checkpoints, plan_document=plan_to_dict(plan),
                                     resume=setup.resume or bool(tried), planned_bytes=_planned(plan, candidate))
        except OutOfMemoryDuringStage as error:
            failure = str(error)  # the traceback (and the step's tensors) go with this block
        if failure is not None:
            del model, dataset, parts
            gc.collect()
            torch.cuda.empty_cache()
            tried.append(candidate)
            entry = plan.next_smaller(candidate, tried)
            if entry is None:
                raise OptionError(f"CUDA ran out of memory with {_describe(candidate)} and the plan has no smaller "
                                  f"candidate for this backbone and head ({failure})")
            fallbacks.append({"from": _describe(candidate), "to": _describe(entry.candidate), "error": failure})
            hooks.log.write(stage="lofi", event="oom_fallback", **fallbacks[-1])
            candidate = entry.candidate
            continue
        summary.stage("lofi", completed=outcome.completed, steps=outcome.steps, epochs=outcome.epochs_done,
                      seconds=round(outcome.seconds, 2), skipped_videos=outcome.skipped_videos,
                      last_loss=outcome.last_loss, candidate=_describe(candidate), fallbacks=fallbacks,
                      checkpointing=candidate.checkpointing,
                      checkpointed_blocks=list(model.encoder.checkpointed_blocks),
                      peak_allocated_bytes=outcome.peak_allocated_bytes,
                      peak_reserved_bytes=outcome.peak_reserved_bytes,
                      planned_reserved_bytes=_planned(plan, candidate))
        return outcome, candidate


def _pretrain(config: TrainConfig, training: Videos, hooks: StageHooks, summary: _Summary) -> None:
    """Make the encoder's pre-trained weights (config.pretrained) unless they exist."""
    from lofi.train.pretrain_stage import pretrain_encoder, read_manifest, weights_complete

    reused = weights_complete(config.pretrained)
    if hooks.context.is_main and not reused:
        pretrain_encoder(config.backbone, list(training.records), training.media, training.classes, config.data,
                         config.pretrain, config.pretrained, device=hooks.context.device, progress=hooks.progress)
    barrier(hooks.context)
    manifest = read_manifest(config.pretrained) or {}
    summary.stage("pretrain", reused=reused, weights=config.pretrained, seconds=0.0 if reused else manifest.get("seconds"),
                  train_accuracy=manifest.get("train_accuracy"), epochs=manifest.get("epochs"))


def _features(setup: RunSetup, training: Videos, videos: Videos, hooks: StageHooks, summary: _Summary) -> bool:
    """Full-fidelity features of `videos` from the trained encoder (the LoFi stage's last
    checkpoint, rebuilt from what it holds) or the baseline's frozen one."""
    config, run, context = setup.config, setup.run, hooks.context
    if config.baseline:
        encoder = baseline_encoder(config, training, context.device)
        tag = f"baseline:{config.backbone}:seed={config.seed}:pretrained={config.pretrained}"
    else:
        loaded = load_checkpoint(run.lofi_checkpoints, map_location=context.device)
        model, _ = model_from_checkpoint(loaded.state, loaded.path, fallback=config, device=context.device)
        encoder = model.encoder
        tag = f"lofi:{config.backbone}:step={loaded.state['step']}"
        if encoder.bn_mode != "frozen":
            # BatchNorm trained on low-fidelity batches (all of them, or the first one under
            # partialBN): re-estimate those statistics at the full fidelity the features
            # are extracted at (as PreciseBN does).
            init_batchnorm(encoder, config, training, context.device, only_first=encoder.bn_mode == "partial")
    encoder.set_grad_checkpointing("none")
    dataset = video_dataset(config, videos, config.data.full_fidelity, augment=False)
    precision = "fp32" if context.device.type != "cuda" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    outcome = extract_features(encoder, dataset, run.features, context, batch_size=config.feature_batch,
                               precision=precision, num_workers=config.num_workers, encoder_tag=tag,
                               progress=hooks.progress, stop=hooks.stop)
    shares = gather(context, outcome, what="the features summary")  # every rank's count
    summary.stage("features", completed=outcome.completed, extracted=sum(o.extracted for o in shares),
                  reused=sum(o.reused for o in shares), skipped=sorted(v for o in shares for v in o.skipped),
                  seconds=round(max(o.seconds for o in shares), 2), fidelity=config.data.full_fidelity.label(),
                  encoder=tag, ranks=len(shares))
    return outcome.completed


def _head(setup: RunSetup, train_records: Sequence[VideoRecord], hooks: StageHooks, summary: _Summary) -> bool:
    config, run = setup.config, setup.run
    index = read_index(run.features)
    features = load_features(run.features, [r.video_id for r in train_records])
    if not features:
        raise OptionError(f"no features for the training videos in {run.features}; run the features stage")
    channels, temporal_dim = next(iter(features.values())).shape
    torch.manual_seed(config.seed)
    head = build_head(config.head, in_channels=channels, temporal_dim=temporal_dim)
    outcome = train_head(head, features, train_records, config.head_stage, batch_size=config.head_batch,
                         device=hooks.context.device, checkpoint_dir=run.head_checkpoints, seed=config.seed,
                         log=hooks.log, stop=hooks.stop, progress=hooks.progress, resume=setup.resume,
                         labels=config.head)
    summary.stage("head", completed=outcome.completed, epochs=outcome.epochs_done, steps=outcome.steps,
                  videos=outcome.videos, last_loss=outcome.last_loss, seconds=round(outcome.seconds, 2),
                  features_encoder=index["encoder"])
    return outcome.completed


def _evaluate(config: TrainConfig, evaluation: Videos, run: RunFolder, device: torch.device,
              summary: _Summary) -> None:
    eval_records, classes = list(evaluation.records), evaluation.classes
    started = time.perf_counter()
    features = load_features(run.features, [r.video_id for r in eval_records])
    if not features:
        raise OptionError(f"no features for the '{config.data.eval_subset}' videos in {run.features}")
    channels, temporal_dim = next(iter(features.values())).shape
    head = build_head(config.head, in_channels=channels, temporal_dim=temporal_dim)
    try:
        head.load_state_dict(load_checkpoint(run.head_checkpoints).state["model"])
    except CheckpointError as error:
        raise CheckpointError(f"{error}; run the head stage first") from None
    proposals = predict(head, config.head, features, eval_records, device=device, top_k=config.top_k_proposals,
                        end_rule=config.proposal_end)
    scores = load_class_scores(config.data.classification, classes) if config.data.classification else None
    outcome = write_and_evaluate(proposals, annotations=config.data.annotations, subset=config.data.eval_subset,
                                 class_names=classes, class_scores=scores, top_k_classes=config.top_k_classes,
                                 results_path=run.results, proposals_path=run.proposals)
    summary.stage("eval", videos=outcome.videos, seconds=round(time.perf_counter() - started, 2))
    summary.document["metrics"] = {"detection": outcome.detection, "proposals": outcome.proposals}


def _planned(plan: Plan, candidate: Candidate) -> int | None:
    entry = plan.entry_for(candidate)
    return None if entry is None else entry.memory.reserved_peak


def _describe(candidate: Candidate) -> str:
    from lofi.plan_axes import describe

    return describe(candidate)


def _merge_previous(run: RunFolder, document: dict[str, Any]) -> None:
    """Keep what earlier invocations (other --stage runs) recorded for stages not rerun."""
    from planner.strict_json import read_json_file

    if not run.summary.exists():
        return
    try:
        previous = read_json_file(run.summary)
    except (OSError, ValueError):
        return
    lofi, earlier = document["stages"].get("lofi"), previous.get("stages", {}).get("lofi")
    if lofi and earlier and document.get("resumed"):  # a resumed LoFi stage: the time of every invocation
        lofi["seconds"] = round(lofi["seconds"] + earlier.get("seconds", 0.0), 2)
        lofi["last_loss"] = lofi["last_loss"] if lofi["last_loss"] is not None else earlier.get("last_loss")
    for name, values in previous.get("stages", {}).items():
        document["stages"].setdefault(name, values)
    if "metrics" not in document and "metrics" in previous:
        document["metrics"] = previous["metrics"]
