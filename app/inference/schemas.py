"""What /predict accepts and what the API answers, and plain-words reasons for bad input.

The request record is built from the data contract (app.covertype), so the ranges and allowed
values checked here are the ones ingestion checks. /predict decodes its body with one msgspec
decoder made at start (one pass from bytes to typed records, no intermediate dicts) and turns
msgspec's first error into a 400 that names the row, the field and the reason.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from app.covertype import (
    CATEGORICAL_COLUMNS,
    COVER_TYPES,
    FEATURE_COLUMNS,
    NUMERIC_COLUMNS,
    NUMERIC_RANGES,
    SOIL_TYPES,
    WILDERNESS_AREAS,
)

ALLOWED_VALUES: dict[str, tuple[str, ...]] = {
    "Wilderness_Area": WILDERNESS_AREAS,
    "Soil_Type": SOIL_TYPES,
}


def _numeric_field(column: str) -> Any:
    # A float that is a multiple of 1 is exactly JSON Schema's "integer": 931 and 931.0 are
    # both accepted (as JSON Schema says they must be), 931.5, "931" and true are not.
    # record_schema() documents it as type integer.
    low, high = NUMERIC_RANGES[column]
    return Annotated[
        float, msgspec.Meta(ge=low, le=high, multiple_of=1, description=f"integer, {low}..{high}")
    ]


def _categorical_field(column: str) -> Any:
    return Annotated[
        Literal[ALLOWED_VALUES[column]],  # type: ignore[valid-type]
        msgspec.Meta(description=f"one of the {len(ALLOWED_VALUES[column])} known values"),
    ]


# One record: exactly the 12 feature columns, named as in the dataset.
FeatureRecord = msgspec.defstruct(
    "FeatureRecord",
    [(c, _numeric_field(c)) for c in NUMERIC_COLUMNS]
    + [(c, _categorical_field(c)) for c in CATEGORICAL_COLUMNS],
    forbid_unknown_fields=True,
)
assert FeatureRecord.__struct_fields__ == FEATURE_COLUMNS


def as_integer_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema msgspec makes for a record, with the whole-number floats spelled as
    what they are, {"type": "integer"}."""
    properties = {
        name: (
            {k: v for k, v in prop.items() if k != "multipleOf"} | {"type": "integer"}
            if prop.get("type") == "number" and prop.get("multipleOf") == 1
            else prop
        )
        for name, prop in schema["properties"].items()
    }
    return {**schema, "properties": properties}


def predict_body_type(max_rows: int) -> Any:
    """One record, or a list of 1..max_rows records."""
    rows = Annotated[list[FeatureRecord], msgspec.Meta(min_length=1, max_length=max_rows)]  # type: ignore[valid-type]
    return FeatureRecord | rows


class Prediction(msgspec.Struct):
    cover_type: Annotated[int, msgspec.Meta(description="class number, 1..7")]
    cover_type_name: str
    probabilities: Annotated[
        dict[str, float],
        msgspec.Meta(description="probability of each of the 7 classes, keyed by class name"),
    ]


class PredictResponse(msgspec.Struct):
    model_name: str
    model_version: Annotated[str, msgspec.Meta(description="the version that answered every row")]
    model_alias: str | None
    backend: Annotated[str, msgspec.Meta(description="onnx or sklearn")]
    predictions: Annotated[
        list[Prediction], msgspec.Meta(description="one per record, in the order sent")
    ]


class ModelInfo(msgspec.Struct):
    name: str
    alias: Annotated[str, msgspec.Meta(description="the alias the watcher follows")]
    pinned_version: Annotated[
        str | None,
        msgspec.Meta(description="set by a reload of an explicit version; the watcher then waits"),
    ]
    loaded: bool
    version: str | None
    loaded_from: Annotated[str | None, msgspec.Meta(description="alias or version it came from")]
    run_id: str | None
    loaded_at: datetime | None
    backend: str | None
    backend_reason: str | None
    metrics: dict[str, float]
    trained_batches: int | None
    trained_rows: int | None
    training_info: Annotated[
        dict[str, str], msgspec.Meta(description="the run params/tags the training facts came from")
    ]
    alias_version: Annotated[
        str | None,
        msgspec.Meta(description="the version the alias pointed to when the watcher last asked"),
    ]
    notice: Annotated[
        str | None,
        msgspec.Meta(
            description=(
                "set when the version served is not the one the alias points to: which one it "
                "points to, why it is not served (e.g. its artifacts could not be loaded), and "
                "what is served instead"
            )
        ),
    ]
    last_error: str | None
    last_error_at: datetime | None
    last_check_at: datetime | None
    poll_interval_seconds: float
    tracking_uri: str


class ReloadResult(msgspec.Struct):
    outcome: Literal["loaded", "unchanged"]
    model: ModelInfo


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    ready: bool
    version: str | None
    detail: str


CLASS_NAMES: tuple[str, ...] = tuple(COVER_TYPES[k] for k in sorted(COVER_TYPES))


# --- Bad input, in plain words ------------------------------------------------------------------

_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_ROW = re.compile(r"^\[(?P<row>\d+)\]")
_FIELD_NAME = re.compile(r"field `(?P<field>[^`]+)`")


class BadInput(Exception):
    """A client mistake in the /predict body: becomes a 400 naming field, row and reason."""

    def __init__(self, message: str, field: str, row: int | None) -> None:
        super().__init__(message)
        self.message, self.field, self.row = message, field, row

    def detail(self) -> str:
        where = self.field if self.row is None else f"row {self.row}, field {self.field}"
        return f"Invalid input ({where}): {self.message}"

    def extra(self) -> list[dict[str, Any]]:
        item: dict[str, Any] = {"key": self.field, "message": self.message, "source": "body"}
        if self.row is not None:
            item["row"] = self.row
        return [item]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


_UNREADABLE = object()


def _value_at(body: bytes, row: int | None, field: str) -> Any:
    """The offending value, for the message (only on the error path, so a second parse is ok)."""
    try:
        data = msgspec.json.decode(body)
        record = data[row] if row is not None else data
        return record[field]
    # RecursionError: msgspec's untyped decode refuses deep nesting that the typed decoder
    # rejected at its first bracket (found by fuzzing: it was a 500).
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, LookupError, TypeError):
        return _UNREADABLE


_GOT = re.compile(r"got `(?P<type>\w+)`")


def _numeric_problem(value: Any, low: int, high: int, problem: str) -> str:
    allowed = f"integer {low}..{high}"
    if value is _UNREADABLE:
        # Too deep to re-read (msgspec named the type it found), or too large for a float.
        if (got := _GOT.search(problem)) and got.group("type") in ("array", "object"):
            return f"expected an {allowed}, got {got.group('type')}"
        return f"number out of range; allowed: {allowed}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected an {allowed}, got {_json_type(value)} {value!r}"
    if isinstance(value, float) and not value.is_integer():
        return f"expected an {allowed}, got number {value!r}"
    return f"{int(value)} is out of range; allowed: {allowed}"


def explain(exc: msgspec.DecodeError | UnicodeDecodeError, body: bytes, max_rows: int) -> BadInput:
    """Turn msgspec's error for `body` into a BadInput with field, row and a readable reason."""
    if isinstance(exc, UnicodeDecodeError):
        return BadInput(f"malformed JSON: a string is not valid UTF-8 ({exc.reason})", "body", None)
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        reason = "empty body" if not body.strip() else text.removeprefix("JSON is malformed: ")
        return BadInput(f"malformed JSON: {reason}", "body", None)

    match = _PATH.search(text)
    problem = text[: match.start()] if match else text
    path = match.group("path") if match else ""
    row: int | None = None
    if row_match := _ROW.match(path):
        row = int(row_match.group("row"))
        path = path[row_match.end() :]
    field = path.lstrip(".") or "body"

    if "missing required field" in problem and (name := _FIELD_NAME.search(problem)):
        return BadInput("missing required field", name.group("field"), row)
    if "unknown field" in problem and (name := _FIELD_NAME.search(problem)):
        expected = ", ".join(FEATURE_COLUMNS)
        return BadInput(
            f"unknown field; send exactly these fields: {expected}", name.group("field"), row
        )
    if field in ALLOWED_VALUES:
        value = _value_at(body, row, field)
        value = None if value is _UNREADABLE else value
        allowed = ", ".join(ALLOWED_VALUES[field])
        if isinstance(value, str):
            return BadInput(f"unknown value {value!r}; allowed values: {allowed}", field, row)
        return BadInput(
            f"expected a string, got {_json_type(value)}; allowed values: {allowed}", field, row
        )
    if field in NUMERIC_RANGES:
        low, high = NUMERIC_RANGES[field]
        value = _value_at(body, row, field)
        return BadInput(_numeric_problem(value, low, high, problem), field, row)
    if field == "body":
        if "length >= 1" in problem:
            return BadInput("empty list: send at least one record", "body", None)
        if "length <=" in problem:
            return BadInput(f"too many rows: at most {max_rows} records per request", "body", None)
        if row is not None:
            return BadInput(f"expected a record (JSON object): {problem}", "body", row)
        return BadInput(
            f"expected a record (JSON object) or a list of them: {problem}", "body", None
        )
    return BadInput(problem, field, row)
