"""The reliability suite's figures: each case adds a row; tests/conftest.py prints the table
at the end of the run, in the README's format."""

from dataclasses import dataclass

COLUMNS = ("case", "requests sent", "failed", "recovery", "what held")


@dataclass
class Row:
    case: str
    sent: int
    failed: int
    recovery: str
    held: str


ROWS: list[Row] = []


def record(case: str, sent: int, failed: int, held: str, recovery: float | None = None) -> None:
    ROWS.append(Row(case, sent, failed, "-" if recovery is None else f"{recovery:.2f} s", held))


def table() -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += [f"| {r.case} | {r.sent} | {r.failed} | {r.recovery} | {r.held} |" for r in ROWS]
    return "\n".join(lines)
