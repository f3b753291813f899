"""Tabular records as numeric features: the columns a model names (``feature_fields``), read
from a CSV row (text), a Parquet row (typed) or a JSONL object, each to one finite number.

A missing, empty or non-numeric value makes the record a per-record error that names the field;
the job goes on. No numpy here: the worker turns the numbers into a tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from barge.errors import excerpt


def numeric_value(value: Any, name: str) -> tuple[float | None, str | None]:
    """``value`` of feature field ``name`` as a float, or why it is not one.

    Integers, floats and decimals are taken as they are; text (a CSV cell) is parsed as a
    decimal number (surrounding spaces ignored). Booleans, null, empty text, NaN, infinities and
    anything else are refused."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, f"feature field {name!r} has no value"
    if isinstance(value, bool):
        return (
            None,
            f"feature field {name!r} is a boolean ({str(value).lower()}), expected a number",
        )
    if isinstance(value, int | float | Decimal):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(Decimal(value.strip()))
        except (InvalidOperation, ValueError):
            return None, f"feature field {name!r} is {excerpt(value)}, expected a number"
    else:
        return None, f"feature field {name!r} is {type(value).__name__}, expected a number"
    if not math.isfinite(number):
        return None, f"feature field {name!r} is {value!r}, expected a finite number"
    return number, None


def feature_vector(
    row: Mapping[str, Any], fields: Sequence[str]
) -> tuple[list[float] | None, str | None]:
    """The values of ``fields`` in ``row``, in order, or the first problem (a missing field or a
    value that is not a number)."""
    try:
        values = list(map(row.__getitem__, fields))
    except KeyError:
        values = None
    # The common case, a Parquet or JSONL row of finite floats, in one pass over C loops (a sum
    # of finite values that overflows, or a NaN, takes the checked path below).
    if values is not None and set(map(type, values)) == {float} and math.isfinite(sum(values)):
        return values, None
    out: list[float] = []
    for name in fields:
        if name not in row:
            return None, f"record has no feature field {name!r}"
        number, problem = numeric_value(row[name], name)
        if problem is not None:
            return None, problem
        assert number is not None
        out.append(number)
    return out, None
