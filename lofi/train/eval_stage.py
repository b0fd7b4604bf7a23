"""Stage 4, inference and evaluation: the head's outputs on the evaluation videos become
proposals (boundary candidates, score fusion, soft-NMS, top 100), then detections fused
with the video-level class scores (top-2 classes, as G-TAD does on ActivityNet); both
are written in the official format and scored with lofi.evaluation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lofi.data.annotations import AnnotationSet, VideoRecord
from lofi.errors import InputFileError
from lofi.evaluation import evaluate_detection, evaluate_proposals, load_ground_truth
from planner.atomic_files import atomic_write_json
from planner.strict_json import read_json_document
from lofi.models.postprocess import detection_entries, proposal_entries, proposals_from_output
from lofi.models.soft_nms import SOFT_NMS_PRESETS, soft_nms


@dataclass(frozen=True)
class EvalOutcome:
    videos: int
    detection: dict[str, Any] | None  # DetectionResult.to_json(), None without class scores
    proposals: dict[str, Any]  # ProposalResult.to_json()


def load_class_scores(path: str | Path, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Video-level class scores `{"results": {vid: [score per class]}, "class": [names]}`,
    reordered to `class_names`. Also accepts `{"results": {vid: [{"label", "score"}]}}`."""
    document = read_json_document(path, InputFileError, "classification file")
    results = document.get("results") if isinstance(document, dict) else None
    if not isinstance(results, dict):
        raise InputFileError(f"{path}: missing 'results' object of video-level class scores")
    position = {name: i for i, name in enumerate(class_names)}
    names = document.get("class")
    out: dict[str, np.ndarray] = {}
    for video_id, scores in results.items():
        vector = np.zeros(len(class_names))
        if isinstance(scores, list) and scores and isinstance(scores[0], dict):
            pairs = [(entry.get("label"), entry.get("score")) for entry in scores]
        elif isinstance(scores, list) and isinstance(names, list) and len(names) == len(scores):
            pairs = list(zip(names, scores))
        else:
            raise InputFileError(f"{path}: results[{video_id!r}] is neither a list of scores matching "
                                 "'class' nor a list of {label, score}")
        for label, score in pairs:
            if not isinstance(score, (int, float)) or isinstance(score, bool) or not np.isfinite(score):
                raise InputFileError(f"{path}: results[{video_id!r}]: score {score!r} of {label!r} is not a number")
            if label in position:
                vector[position[label]] = float(score)
        out[video_id] = vector
    return out


def check_class_scores(path: str | Path, annotations: AnnotationSet, subset: str) -> None:
    """Before training: the classification file covers every `subset` video of the
    annotations and scores at least one of their classes; errors name the file."""
    scores = load_class_scores(path, annotations.classes)
    missing = [r.video_id for r in annotations.records if r.subset == subset and r.video_id not in scores]
    if missing:
        raise InputFileError(f"{path}: no class scores for {len(missing)} '{subset}' video(s) of "
                             f"{annotations.path}, e.g. {missing[0]!r}")
    if scores and not any(vector.any() for vector in scores.values()):
        raise InputFileError(f"{path}: none of its class labels is a class of {annotations.path} "
                             f"({', '.join(annotations.classes[:3])}, ...)")


@torch.inference_mode()
def predict(
    head: nn.Module,
    head_name: str,
    features: Mapping[str, torch.Tensor],
    records: Sequence[VideoRecord],
    *,
    device: torch.device,
    top_k: int = 100,
    end_rule: str = "lofi",
) -> dict[str, np.ndarray]:
    """Proposals (N <= top_k, 3) [start_s, end_s, score] after soft-NMS, per video."""
    head.to(device).eval()
    params = SOFT_NMS_PRESETS[head_name]
    out = {}
    for record in records:
        if record.video_id not in features:
            continue
        output = head(features[record.video_id][None].to(device))
        start, end = output.start[0].float().cpu().numpy(), output.end[0].float().cpu().numpy()
        cmap = output.confidence_map[0].float().cpu().numpy()
        proposals = proposals_from_output(start, end, cmap, record.duration, head_name, end_rule=end_rule)
        out[record.video_id] = soft_nms(proposals, duration=record.duration, alpha=params.alpha,
                                        low=params.low, high=params.high, top_k=top_k)
    return out


def write_and_evaluate(
    proposals: Mapping[str, np.ndarray],
    *,
    annotations: str | Path,
    subset: str,
    class_names: Sequence[str],
    class_scores: Mapping[str, np.ndarray] | None,
    top_k_classes: int,
    results_path: Path,
    proposals_path: Path,
) -> EvalOutcome:
    """Write proposals.json (and results.json when class scores exist) in the official
    format, then score them against the annotations' `subset`."""
    proposal_doc = {"version": "lofi", "external_data": {},
                    "results": {vid: proposal_entries(p) for vid, p in proposals.items()}}
    atomic_write_json(proposals_path, proposal_doc)
    ground_truth = load_ground_truth(annotations, subset=subset)
    proposal_result = evaluate_proposals(ground_truth, proposal_doc, subset=subset).to_json()
    detection = None
    if class_scores is not None:
        missing = sorted(set(proposals) - set(class_scores))
        if missing:
            raise InputFileError(f"classification scores missing for {len(missing)} evaluated video(s), "
                                 f"e.g. {missing[0]!r}")
        results = {vid: detection_entries(p, class_scores[vid], class_names, top_k_classes)
                   for vid, p in proposals.items()}
        detection_doc = {"version": "lofi", "external_data": {}, "results": results}
        atomic_write_json(results_path, detection_doc)
        # A class of the dataset without ground truth in this subset (a small validation
        # set) is not scored: the official code's mAP averages over the subset's classes
        # (eval_detection.py builds activity_index from the subset's ground truth).
        unscored = [name for name in class_names if name not in ground_truth.classes]
        detection = evaluate_detection(ground_truth, detection_doc, subset=subset,
                                       ignore_unknown_labels=bool(unscored)).to_json()
        detection["unscored_classes"] = unscored
    return EvalOutcome(len(proposals), detection, proposal_result)
