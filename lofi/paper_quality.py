"""Quality of a LoFi training configuration (backbone + fidelity or C-LoFi cycle): which
one is expected to give the better localization model, so the planner can pick the best
configuration that fits. The LoFi axes (`lofi.plan_axes`) give the planner this ranking
(`rank_by_paper`, a `planner.quality.QualityRanking`).

Rule (planner issue, "Choice"):
1. The paper's evidence where it covers the configuration: avg mAP on ActivityNet-1.3
   (`profiles/evidence.json`, from PAPER.md and supplementary Table B). Configurations
   with evidence are ordered by it among themselves.
2. Otherwise input volume TR x SR^2, then backbone depth. Volumes are binned in
   half-octaves centred on full fidelity (100 x 224^2), so S (100/112), T (25/224) and
   ST (50/158), which the paper designed to have the same volume, share a bin. Full
   fidelity has 4x the volume of every LoFi configuration, so it ranks above all LoFi
   configurations of the same backbone.
3. Within a volume bin and a depth, the paper's ranking of the same fidelity on another
   backbone breaks ties (T above S and ST, C-LoFi above all three: PAPER.md, R18 rows).

Configurations with evidence keep the positions that rule 2 gives the set of them, and
are re-ordered inside those positions by their evidence (rule 1 wins where it applies).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lofi.fidelities import FULL
from planner.candidate import Candidate
from planner.errors import ProfileError
from planner.fidelity import Fidelity
from planner.hardware.profiles import profiles_dir
from planner.quality import ConfigKey, config_key
from planner.strict_json import Node, read_json_document


@dataclass(frozen=True)
class Evidence:
    """One end-to-end result of the paper for an encoder configuration."""

    backbone: str
    fidelities: tuple[Fidelity, ...]
    is_cycle: bool
    avg_map: float
    head: str
    hardware: str
    source: str


@dataclass(frozen=True)
class PaperQuality:
    """Where a configuration ranks (a `planner.quality.Quality`); `tier` 0 is the best of
    the configurations ranked together."""

    tier: int
    backbone: str
    fidelities: tuple[Fidelity, ...]
    is_cycle: bool
    volume: float  # TR x SR^2 (mean over a cycle's members)
    volume_bin: float  # log2(volume / full volume), rounded to half-octaves
    depth: int
    evidence: Evidence | None  # the paper's result for exactly this configuration
    transferred_map: float | None  # mean paper result of this fidelity on other backbones

    def summary(self) -> str:
        if self.evidence is not None:
            return f"paper: {self.evidence.avg_map:.2f} avg mAP"
        if self.transferred_map is not None:
            return f"no paper result; TR×SR² {_volume(self.volume)}, depth {self.depth} (fidelity: {self.transferred_map:.2f} on other backbones)"
        return f"no paper result; TR×SR² {_volume(self.volume)}, depth {self.depth}"

    @property
    def reported_score(self) -> float | None:
        """The paper's avg mAP for exactly this configuration (plan.json: paper_avg_map)."""
        return self.evidence.avg_map if self.evidence is not None else None

    def why_below(self, best: PaperQuality) -> str:
        return why_lower(self, best)


def backbone_depth(backbone: str) -> int:
    """tsm_r50 -> 50, r2plus1d_18 -> 18 (the trailing number of the name)."""
    match = re.search(r"(\d+)$", backbone)
    if match is None:
        raise ValueError(f"cannot read a depth from backbone name {backbone!r}")
    return int(match.group(1))


def input_volume(fidelities: Sequence[Fidelity]) -> float:
    """TR x SR^2, averaged over the members of a cycle (each is trained on in turn)."""
    return sum(f.tr * f.sr * f.sr for f in fidelities) / len(fidelities)


def volume_bin(volume: float) -> float:
    """Half-octave bins centred on full fidelity: full -> 0, S/T/ST -> -2, 25/112 -> -4."""
    return round(2 * math.log2(volume / (FULL.tr * FULL.sr * FULL.sr))) / 2


def load_evidence(root: Path | None = None) -> tuple[Evidence, ...]:
    path = (root if root is not None else profiles_dir()) / "evidence.json"
    return evidence_from_dict(read_json_document(path, ProfileError, "evidence file"), str(path))


def evidence_from_dict(document: Any, origin: str) -> tuple[Evidence, ...]:
    root = Node(document, origin, error=ProfileError)
    root.fields(("schema", "metric", "dataset", "note", "configurations", "baselines"), ("schema", "configurations"))
    if root.get("schema") != 1:
        raise root.fail("schema", f"must be 1, got {root.get('schema')!r}")
    return tuple(_evidence_row(row) for row in root.list("configurations"))


def rank_by_paper(candidates: Iterable[Candidate]) -> dict[ConfigKey, PaperQuality]:
    """`rank_quality` with the shipped evidence (`profiles/evidence.json`)."""
    return rank_quality(candidates, load_evidence())


def rank_quality(candidates: Iterable[Candidate], evidence: Sequence[Evidence]) -> dict[ConfigKey, PaperQuality]:
    """Quality of every configuration among `candidates`, ranked together."""
    keys = sorted({config_key(c) for c in candidates}, key=_label)
    own = {(e.backbone, e.fidelities, e.is_cycle): e for e in evidence}
    facts = {key: _facts(key, own, evidence) for key in keys}
    # Rule 2 (+3): heuristic order, best first.
    order = sorted(keys, key=lambda k: facts[k]["heuristic"], reverse=True)
    # Rule 1: configurations with evidence re-ordered by it inside their own positions.
    slots = [i for i, key in enumerate(order) if facts[key]["evidence"] is not None]
    covered = sorted((order[i] for i in slots), key=lambda k: facts[k]["evidence"].avg_map, reverse=True)
    for slot, key in zip(slots, covered):
        order[slot] = key
    qualities: dict[ConfigKey, PaperQuality] = {}
    tier = -1
    previous: ConfigKey | None = None
    for key in order:
        same = (
            previous is not None
            and facts[key]["evidence"] is None
            and facts[previous]["evidence"] is None
            and facts[key]["heuristic"] == facts[previous]["heuristic"]
        )
        tier += 0 if same else 1
        f = facts[key]
        qualities[key] = PaperQuality(
            tier=tier,
            backbone=key[0],
            fidelities=key[1],
            is_cycle=key[2],
            volume=f["volume"],
            volume_bin=f["bin"],
            depth=f["depth"],
            evidence=f["evidence"],
            transferred_map=f["transferred"],
        )
        previous = key
    return qualities


def why_lower(lower: PaperQuality, best: PaperQuality) -> str:
    """The reason `lower` ranks below `best`, for a rejected candidate."""
    if lower.evidence is not None and best.evidence is not None:
        return f"lower fidelity: paper {lower.evidence.avg_map:.2f} vs {best.evidence.avg_map:.2f} avg mAP"
    if lower.volume_bin < best.volume_bin:
        return f"lower fidelity: TR×SR² {_volume(lower.volume)} vs {_volume(best.volume)}"
    if lower.volume_bin == best.volume_bin and lower.depth < best.depth:
        return f"lower fidelity: smaller backbone ({lower.backbone} vs {best.backbone})"
    if best.evidence is not None and lower.evidence is None:
        return f"lower fidelity: no paper result, ranked below a paper result ({best.evidence.avg_map:.2f} avg mAP)"
    ours = lower.evidence.avg_map if lower.evidence else lower.transferred_map
    theirs = best.evidence.avg_map if best.evidence else best.transferred_map
    if ours is not None and theirs is not None:
        return f"lower fidelity: paper {ours:.2f} vs {theirs:.2f} avg mAP for these fidelities"
    return f"lower fidelity: TR×SR² {_volume(lower.volume)} vs {_volume(best.volume)}"


def _facts(key: ConfigKey, own: dict, evidence: Sequence[Evidence]) -> dict[str, Any]:
    backbone, fidelities, is_cycle = key
    volume = input_volume(fidelities)
    depth = backbone_depth(backbone)
    mine = own.get(key)
    others = [e.avg_map for e in evidence if e.fidelities == fidelities and e.is_cycle == is_cycle and e.backbone != backbone]
    transferred = sum(others) / len(others) if others else None
    tiebreak = mine.avg_map if mine is not None else (transferred if transferred is not None else -math.inf)
    bin_ = volume_bin(volume)
    return {
        "volume": volume,
        "bin": bin_,
        "depth": depth,
        "evidence": mine,
        "transferred": transferred,
        "heuristic": (bin_, depth, tiebreak, volume, is_cycle),
    }


def _evidence_row(row: Node) -> Evidence:
    values = row.fields(("backbone", "fidelity", "cycle", "cycle_schedule", "avg_map", "head", "hardware", "source"))
    if ("fidelity" in values) == ("cycle" in values):
        raise row.fail(None, "needs exactly one of fidelity and cycle")
    for name in ("backbone", "head", "hardware", "source"):
        if not isinstance(values.get(name), str) or not values[name]:
            raise row.fail(name, "must be a non-empty string")
    value = values.get("avg_map")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise row.fail("avg_map", f"must be a number, got {value!r}")
    pairs = [values["fidelity"]] if "fidelity" in values else values["cycle"]
    try:
        fidelities = tuple(Fidelity(int(tr), int(sr)) for tr, sr in pairs)
    except (TypeError, ValueError) as error:
        raise row.fail("cycle" if "cycle" in values else "fidelity", f"fidelities are [TR, SR] pairs ({error})") from None
    return Evidence(values["backbone"], fidelities, "cycle" in values, float(value), values["head"], values["hardware"],
                    values["source"])


def _label(key: ConfigKey) -> str:
    backbone, fidelities, is_cycle = key
    return f"{backbone} {'C' if is_cycle else ''}{'+'.join(f.label() for f in fidelities)}"


def _volume(volume: float) -> str:
    return f"{volume / 1e6:.2f} M"
