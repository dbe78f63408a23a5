"""The one interface every kernel facility implements, and the one result they all return.

The runtime's step runner knows nothing about routes, frames or rulesets: it
calls these methods in the order core.plan gives and files each result in the
transition history. `prepare` runs at start-up and after a reload, so that a
takeover pays for nothing it could have done earlier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.config import Block

# Keep status output bounded when a whole block fails (e.g. every address exists elsewhere).
EXAMPLES_PER_ERROR = 5


@dataclass
class StepResult:
    """What one step did: counts, errors by errno name (with a few examples), a problem
    that stopped it, how long it took, and facts particular to the facility."""

    applied: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    problem: str | None = None
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors and self.problem is None

    def fail(self, name: str, labels: Sequence[str], count: int | None = None) -> None:
        """Count `count` (default: one per label) failures of errno `name`."""
        self.errors[name] = self.errors.get(name, 0) + (len(labels) if count is None else count)
        kept = self.examples.setdefault(name, [])
        kept.extend(labels[: max(0, EXAMPLES_PER_ERROR - len(kept))])

    def merge(self, other: StepResult) -> None:
        self.applied += other.applied
        for name, count in other.errors.items():
            self.fail(name, other.examples.get(name, []), count)
        self.problem = self.problem or other.problem

    def as_dict(self) -> dict:
        return {
            "applied": self.applied,
            "errors": dict(self.errors),
            "examples": {k: list(v) for k, v in self.examples.items()},
            "problem": self.problem,
            "seconds": round(self.seconds, 6),
            **self.detail,
        }


class DataplaneStep(Protocol):
    """One kernel facility. Every method but `refresh`, `cancel` and `status` may
    block its own worker; none may block the event loop."""

    facility: str
    # The runner's operation ("take", "release", "adjust") -> the verb of its timed
    # step in the history ("take:ext"), or None when the operation is not a step.
    verbs: Mapping[str, str | None]

    async def prepare(self, blocks: Sequence[Block]) -> None:
        """These are the configured blocks now: do ahead whatever a takeover would pay for."""

    async def take(self, block: Block) -> StepResult: ...

    async def release(self, block: Block) -> StepResult: ...

    async def adjust(self, old: Block, new: Block) -> StepResult:
        """A held block redefined: change only the difference, never release what stays."""

    async def repair(self, block: Block) -> StepResult:
        """Put back what someone else removed of a held block; `applied` counts it."""

    async def remove_leftovers(self) -> StepResult:
        """Remove what a crashed run of the agent left in the kernel."""

    def refresh(self, blocks: Sequence[Block]) -> None:
        """Re-arm the kernel-side lease of these held blocks. Called on the event loop
        at every advert, so the lease runs out exactly when the adverts stop: it must
        cost well under a millisecond."""

    def cancel(self, name: str) -> None:
        """Stop work in progress for the block now; called on the event loop, must not block."""

    def status(self) -> dict: ...

    async def close(self) -> None: ...
