"""The synthetic dataset: small, fast to make, and learnable only with a trained encoder.

    DIR/videos/<id>.mp4     H.264 (libx264) videos, `size` x `size`, `fps` frames/s
    DIR/annotations.json    ActivityNet-1.3 format, "training" and "validation" subsets
    DIR/classification.json video-level class scores, the role the CUHK classifier
                            results play for ActivityNet: {"results": {id: [score per
                            class]}, "class": [names]}; from the ground truth plus noise
    DIR/manifest.json       the config that made it; written last (the "done" marker)

Each video holds one action class (as nearly every ActivityNet video does) performed in
1-`max_instances` non-overlapping instances of widely varying length; what the classes
look like is in `scenes`. Everything is a function of `SynthConfig`: video i uses
its own random stream (seed, i), so the same seed gives the same files.

    layout.py   the config, which video is which, the JSON documents (pure)
    scenes.py   what moves where and how it looks (pure numpy rendering)
    files.py    writing the folder, reading it back, the cached copy

The names below are the package's interface; `lofi data synth` and training use them.
"""

from lofi.data.synth.files import (
    Progress,
    SynthPaths,
    SynthSummary,
    config_from_manifest,
    describe,
    ensure_synthetic,
    generate,
    read_manifest,
)
from lofi.data.synth.layout import (
    SynthConfig,
    SynthVideo,
    action_mask,
    annotation_document,
    class_name,
    classification_document,
    plan_dataset,
    video_rng,
)

__all__ = [
    "Progress", "SynthConfig", "SynthPaths", "SynthSummary", "SynthVideo", "action_mask", "annotation_document",
    "class_name", "classification_document", "config_from_manifest", "describe", "ensure_synthetic", "generate",
    "plan_dataset", "read_manifest", "video_rng",
]
