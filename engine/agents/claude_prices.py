"""What Claude's tokens cost: the price list by model family, and the cost of one
reply's usage (the figure the journal and the status line add up)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.base.records import Usage


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float            # 5-minute ephemeral cache writes
    cache_read: float


# Matched by prefix, so dated ids (claude-sonnet-4-5-20250929) find their family.
PRICES: dict[str, Price] = {
    "claude-sonnet-4": Price(3.0, 15.0, 3.75, 0.30),
    "claude-opus-4-5": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-6": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-7": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-1": Price(15.0, 75.0, 18.75, 1.50),
    "claude-haiku-4-5": Price(1.0, 5.0, 1.25, 0.10),
}


def cost(usage: Usage, price: Price | None) -> float:
    if price is None:
        return 0.0
    return (usage.input_tokens * price.input + usage.output_tokens * price.output
            + usage.cache_write_tokens * price.cache_write
            + usage.cache_read_tokens * price.cache_read) / 1e6
