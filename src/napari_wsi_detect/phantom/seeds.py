"""Seed lists of phantom test/validation sets as the scripts take them: "500-509", "500,503"."""

from __future__ import annotations


def parse_seeds(text: list[str]) -> list[int]:
    """Seeds of every item: "a-b" is a..b inclusive, commas separate; "" gives none."""
    out: list[int] = []
    for item in text:
        for part in item.split(","):
            if "-" in part:
                a, b = part.split("-")
                out.extend(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    return out
