"""Process incoming order messages: validate, then count or reject in one Redis call."""
from __future__ import annotations

from dataclasses import dataclass

from app.orders import Evaluated, Incoming, evaluate
from app.settings import Settings
from app.store import Store


@dataclass(frozen=True)
class Outcome:
    """What became of one message."""

    message_id: str
    order_id: str | None
    status: str  # counted | duplicate | conflict | rejected
    reasons: dict | None = None

    def as_dict(self) -> dict:
        """A JSON-safe form, used as the task result."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


def process(incoming: list[Incoming], store: Store, settings: Settings) -> list[Outcome]:
    """Validate every message and apply the batch atomically; one outcome per message."""
    evaluated = [evaluate(message, settings) for message in incoming]
    statuses = store.apply(evaluated)
    return [_outcome(e, status) for e, status in zip(evaluated, statuses)]


def tally(outcomes: list[Outcome]) -> dict[str, int]:
    """Messages per outcome of a batch: counted, duplicate, rejected (conflicts included)."""
    counts = {"counted": 0, "duplicate": 0, "rejected": 0}
    for outcome in outcomes:
        counts["rejected" if outcome.status == "conflict" else outcome.status] += 1
    return counts


def _outcome(evaluated: Evaluated, status: str) -> Outcome:
    if evaluated.order:
        return Outcome(evaluated.incoming.message_id, evaluated.order.order_id, status)
    rejection = evaluated.rejection
    return Outcome(rejection.message_id, rejection.order_id, status, rejection.reasons)
