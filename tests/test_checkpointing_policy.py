"""planner.checkpointing: the one parser of a checkpointing policy."""

from __future__ import annotations

import re

import pytest

from planner import checkpointing
from planner.candidate import Candidate
from planner.checkpointing import Checkpointing
from planner.fidelity import Fidelity


@pytest.mark.parametrize(("text", "parsed"), [
    ("none", Checkpointing("none")),
    ("block", Checkpointing("block")),
    ("chunk:4", Checkpointing("chunk", 4)),
    ("chunk:1", Checkpointing("chunk", 1)),
    ("offload", Checkpointing("offload")),
    ("none+head", Checkpointing("none", head=True)),
    ("chunk:4+head", Checkpointing("chunk", 4, head=True)),
    ("offload+head", Checkpointing("offload", head=True)),
    ("blocks:3", Checkpointing("blocks", 3)),
    ("blocks:16", Checkpointing("blocks", 16)),
    ("blocks:2+head", Checkpointing("blocks", 2, head=True)),
])
def test_parse_reads_every_kind_and_labels_it_back(text, parsed):
    assert checkpointing.parse(text) == parsed
    assert parsed.label == text


@pytest.mark.parametrize("text", ["", "chunk", "chunk:", "chunk:0", "chunk:-2", "chunk:x", "block:2", "none:",
                                  "Block", "chunks:4", None, 4, "+head", "head", "none+head+head",
                                  "offload:2", "none+HEAD", "block +head",
                                  "blocks", "blocks:", "blocks:0", "blocks:x", "blocks:-1", "blocks:2:3"])
def test_parse_rejects_anything_else_naming_the_value(text):
    with pytest.raises(ValueError, match=r"must be none, blocks:N, block, chunk:K or offload \(N >= 1, K >= 1\), "
                                         r"each optionally \+head, got " + re.escape(repr(text))):
        checkpointing.parse(text)


def test_recomputation_orders_the_kinds():
    order = sorted(["offload", "chunk:2", "block+head", "none", "none+head", "block", "blocks:3"],
                   key=lambda text: checkpointing.parse(text).recomputation)
    assert order == ["none", "none+head", "blocks:3", "block", "block+head", "chunk:2", "offload"]
    assert not checkpointing.parse("none").enabled and checkpointing.parse("chunk:3").enabled
    assert checkpointing.parse("none+head").enabled and checkpointing.parse("offload").enabled
    assert checkpointing.parse("offload+head").offload and not checkpointing.parse("block").offload


def test_candidate_keeps_the_text_and_parses_it():
    candidate = Candidate("tsm_r18", "gtad", 2, fidelity=Fidelity(16, 112), checkpointing="chunk:8")
    assert candidate.checkpointing == "chunk:8"
    assert candidate.policy == Checkpointing("chunk", 8)
    with pytest.raises(ValueError, match="chunk:K"):
        Candidate("tsm_r18", "gtad", 2, fidelity=Fidelity(16, 112), checkpointing="chunk:0")
