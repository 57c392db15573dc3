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


HUB_AGGREGATES = ("", "MAX", "MIN", "COUNT", "SUM", "AVG")
HUB_OPERATORS = ("=", ">", "<")


def pair(question: str, sql: dict) -> Pair:
    return Pair(prompt=f"Translate the question into SQL.\nQuestion: {question}\nSQL:", target=sql_text(sql))


def parse(record: dict) -> Pair:
    return pair(text_field(record, "question"), record["sql"])


def parse_hub(record: dict) -> Pair:
    """The hub's wikisql names columns by index into the table header; map it to v2's structured SQL."""
    header, sql = record["table"]["header"], record["sql"]
    conds = sql["conds"]
    structured = {
        "sel": header[sql["sel"]],
        "agg": HUB_AGGREGATES[sql["agg"]],
        "conds": [[header[c], HUB_OPERATORS[o], v]
                  for c, o, v in zip(conds["column_index"], conds["operator_index"], conds["condition"])],
    }
    return pair(text_field(record, "question"), structured)


WIKISQL = GenerationTask(
    name="wikisql",
    files={"validation": "wikisql/v2/dev.jsonl", "test": "wikisql/v2/test.jsonl"},
    parse=parse,
    score=exact_match,
    hub=("wikisql", None),
    parse_hub=parse_hub,
    max_new_tokens=64,
    metric_names=("exact_match",),
    teacher_forced_match=True,
)
