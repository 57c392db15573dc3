"""WikiSQL (patched v2: SQL names columns, so no tables file is needed): a question, then its SQL."""

from __future__ import annotations

from ffnprune.metrics.exact_match import exact_match
from ffnprune.tasks.base import GenerationTask, Pair
from ffnprune.tasks.rows import text_field

AGGREGATES = {"", "MAX", "MIN", "COUNT", "SUM", "AVG"}
OPERATORS = {"=", ">", "<"}


def sql_text(sql: dict) -> str:
    """SELECT [agg](col) FROM table [WHERE col op 'value' [AND ...]] from WikiSQL v2's structured SQL."""
    aggregate = sql["agg"].upper()
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {sql['agg']!r}")
    column = f'"{sql["sel"]}"'
    text = f"SELECT {aggregate}({column})" if aggregate else f"SELECT {column}"
    text += " FROM table"
    conditions = []
    for name, operator, value in sql["conds"]:
        if operator not in OPERATORS:
            raise ValueError(f"unknown operator {operator!r}")
        literal = value if isinstance(value, (int, float)) else "'" + str(value).replace("'", "''") + "'"
        conditions.append(f'"{name}" {operator} {literal}')
    if conditions:
        text += " WHERE " + " AND ".join(conditions)
    return text


def parse(record: dict) -> Pair:
    return Pair(prompt=f"Translate the question into SQL.\nQuestion: {text_field(record, 'question')}\nSQL:",
                target=sql_text(record["sql"]))


WIKISQL = GenerationTask(
    name="wikisql",
    files={"validation": "wikisql/v2/dev.jsonl", "test": "wikisql/v2/test.jsonl"},
    parse=parse,
    score=exact_match,
    max_new_tokens=64,
    metric_names=("exact_match",),
    teacher_forced_match=True,
)
