"""A gradient-checkpointing policy, parsed once: `parse("chunk:4") -> Checkpointing`.

The policy travels as text (`Candidate.checkpointing`, plan.json, the trace cache key);
code that needs its parts parses it here. Policies:

    none      keep every activation for backward
    blocks:N  N of the model's residual blocks are checkpoint segments: the N that save
              the most activation memory per recomputed FLOP (the model decides which;
              `blocks:<number of blocks>` is `block`)
    block     every residual block is one checkpoint segment
    chunk:K   the model runs K samples (snippets) at a time, each chunk one segment
    offload   nothing is recomputed: what each encoder block saves for backward is
              copied to pinned host memory and back (`save_on_cpu`)

Any of them may end in `+head` (HEAD_SUFFIX): the head's sampled boundary-matching map
is also recomputed in backward, in checkpoint segments over the anchor durations
('none+head').

A new policy is one more `PolicyKind` in `KINDS`: its name, whether it takes a number,
and where it ranks in recomputation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyKind:
    name: str
    number: str | None  # the letter of its number as written ("K" in chunk:K); None: no number
    recomputation: int  # order among kinds, least recomputation first (ranks equal candidates)

    @property
    def syntax(self) -> str:
        return f"{self.name}:{self.number}" if self.number else self.name


KINDS: dict[str, PolicyKind] = {kind.name: kind for kind in (
    PolicyKind("none", None, 0),
    PolicyKind("blocks", "N", 1),
    PolicyKind("block", None, 2),
    PolicyKind("chunk", "K", 3),
    PolicyKind("offload", None, 4),  # no recomputation, but host transfers: last among equals
)}
HEAD_SUFFIX = "+head"


@dataclass(frozen=True)
class Checkpointing:
    kind: str  # a name in KINDS
    size: int | None = None  # the kind's number (K of chunk:K: samples per chunk; N of blocks:N), else None
    head: bool = False  # `+head`: the head's sampled map is recomputed too, in segments over durations

    @property
    def label(self) -> str:
        """The policy as written in plan.json: 'none', 'blocks:3', 'block', 'chunk:4', 'block+head'."""
        text = self.kind if self.size is None else f"{self.kind}:{self.size}"
        return text + HEAD_SUFFIX if self.head else text

    @property
    def recomputation(self) -> int:
        """The kind's rank in recomputation, least first; `+head` after the same kind without."""
        return 2 * KINDS[self.kind].recomputation + int(self.head)

    @property
    def enabled(self) -> bool:
        return self.kind != "none" or self.head

    @property
    def offload(self) -> bool:
        """Whether the encoder's saved activations go to host memory."""
        return self.kind == "offload"


def syntax() -> str:
    """'none, blocks:N, block, chunk:K or offload (N >= 1, K >= 1), each optionally +head': every policy as written."""
    numbers = [f"{kind.number} >= 1" for kind in KINDS.values() if kind.number]
    text = _or_list([kind.syntax for kind in KINDS.values()])
    text = f"{text} ({', '.join(numbers)})" if numbers else text
    return f"{text}, each optionally {HEAD_SUFFIX}"


def enabled_syntax() -> str:
    """'blocks:N, block, chunk:K or offload': the policies that keep fewer activations, as written."""
    return _or_list([kind.syntax for kind in KINDS.values() if kind.name != "none"])


def _or_list(names: list[str]) -> str:
    """['a', 'b', 'c'] -> 'a, b or c'."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


def parse(text: str) -> Checkpointing:
    """'none' | 'blocks:N' | 'block' | 'chunk:K' | 'offload', each optionally '+head' ->
    Checkpointing. Raises ValueError on anything else (an N above a model's number of
    blocks is the model's to refuse)."""
    if isinstance(text, str):
        head = text.endswith(HEAD_SUFFIX)
        parsed = _parse_kind(text[: -len(HEAD_SUFFIX)] if head else text)
        if parsed is not None:
            return Checkpointing(parsed.kind, parsed.size, head)
    raise ValueError(f"checkpointing policy must be {syntax()}, got {text!r}")


def _parse_kind(text: str) -> Checkpointing | None:
    """'none' | 'block' | 'chunk:K' | ... (a KINDS entry as written) -> Checkpointing, else None."""
    name, colon, number = text.partition(":")
    kind = KINDS.get(name)
    if kind is not None and kind.number is None and not colon:
        return Checkpointing(name)
    if kind is not None and kind.number and number.isdigit() and int(number) >= 1:
        return Checkpointing(name, int(number))
    return None
