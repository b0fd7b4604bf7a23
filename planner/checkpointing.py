"""A gradient-checkpointing policy, parsed once: `parse("chunk:4") -> Checkpointing`.

The policy travels as text (`Candidate.checkpointing`, plan.json, the trace cache key);
code that needs its parts parses it here. Policies:

    none      keep every activation for backward
    blocks:N  N of the model's residual blocks are checkpoint segments: the N that save
              the most activation memory per recomputed FLOP (the model decides which;
              `blocks:<number of blocks>` is `block`)
    block     every residual block is one checkpoint segment
    chunk:K   the model runs K samples (snippets) at a time, each chunk one segment

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
)}


@dataclass(frozen=True)
class Checkpointing:
    kind: str  # a name in KINDS
    size: int | None = None  # the kind's number (K of chunk:K: samples per chunk; N of blocks:N), else None

    @property
    def label(self) -> str:
        """The policy as written in plan.json: 'none', 'blocks:3', 'block', 'chunk:4'."""
        return self.kind if self.size is None else f"{self.kind}:{self.size}"

    @property
    def recomputation(self) -> int:
        """The kind's rank in recomputation, least first."""
        return KINDS[self.kind].recomputation

    @property
    def enabled(self) -> bool:
        return self.kind != "none"


def _either(items: list[str]) -> str:
    return f"{', '.join(items[:-1])} or {items[-1]}" if len(items) > 1 else items[0]


def syntax() -> str:
    """'none, blocks:N, block or chunk:K (N >= 1, K >= 1)': every policy as written."""
    text = _either([kind.syntax for kind in KINDS.values()])
    numbers = [f"{kind.number} >= 1" for kind in KINDS.values() if kind.number]
    return f"{text} ({', '.join(numbers)})" if numbers else text


def enabled_syntax() -> str:
    """'blocks:N, block or chunk:K': the policies that checkpoint anything, as written."""
    return _either([kind.syntax for kind in KINDS.values() if kind.name != "none"])


def parse(text: str) -> Checkpointing:
    """'none' | 'blocks:N' | 'block' | 'chunk:K' -> Checkpointing. Raises ValueError on
    anything else (an N above a model's number of blocks is the model's to refuse)."""
    if isinstance(text, str):
        name, colon, number = text.partition(":")
        kind = KINDS.get(name)
        if kind is not None and kind.number is None and not colon:
            return Checkpointing(name)
        if kind is not None and kind.number and number.isdigit() and int(number) >= 1:
            return Checkpointing(name, int(number))
    raise ValueError(f"checkpointing policy must be {syntax()}, got {text!r}")
