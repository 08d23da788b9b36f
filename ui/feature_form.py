"""The 12 feature inputs, with the data contract's ranges and allowed values checked at the
field, so nothing invalid is ever sent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nicegui import ui

from app.covertype import (
    CATEGORICAL_COLUMNS,
    FEATURE_COLUMNS,
    NUMERIC_COLUMNS,
    NUMERIC_RANGES,
    SOIL_TYPES,
    WILDERNESS_AREAS,
)

UNITS: dict[str, str] = {
    "Elevation": "m",
    "Aspect": "degrees azimuth",
    "Slope": "degrees",
    "Horizontal_Distance_To_Hydrology": "m",
    "Vertical_Distance_To_Hydrology": "m",
    "Horizontal_Distance_To_Roadways": "m",
    "Hillshade_9am": "index",
    "Hillshade_Noon": "index",
    "Hillshade_3pm": "index",
    "Horizontal_Distance_To_Fire_Points": "m",
}
ALLOWED: dict[str, tuple[str, ...]] = {
    "Wilderness_Area": WILDERNESS_AREAS,
    "Soil_Type": SOIL_TYPES,
}
REQUIRED = "Required"
WHOLE_NUMBER = "Must be a whole number"


def label_of(column: str) -> str:
    return column.replace("_", " ")


def range_message(column: str) -> str:
    low, high = NUMERIC_RANGES[column]
    return f"Must be between {low} and {high}"


def unknown_message(column: str) -> str:
    return f"Choose one of the {len(ALLOWED[column])} known values"


class BoundedNumber(ui.number):
    """ui.number that leaves an out-of-range value as typed, for the validation to flag.

    ui.number clamps to min/max on blur, which would silently send a value the user never
    typed; min and max stay for the stepper and the browser's own hints."""

    def sanitize(self) -> None:
        return


def _numeric_rules(column: str) -> dict[str, Callable[[Any], bool]]:
    low, high = NUMERIC_RANGES[column]
    return {
        REQUIRED: lambda v: v is not None,
        WHOLE_NUMBER: lambda v: v is None or float(v).is_integer(),
        range_message(column): lambda v: v is None or low <= float(v) <= high,
    }


def _choice_rules(column: str) -> dict[str, Callable[[Any], bool]]:
    allowed = ALLOWED[column]
    return {
        REQUIRED: lambda v: v is not None and v != "",
        unknown_message(column): lambda v: v is None or v == "" or v in allowed,
    }


def _soil_options() -> dict[str, str]:
    # The UCI name next to the ELU code: "C7745 (Soil type 29)".
    return {code: f"{code} (Soil type {i})" for i, code in enumerate(SOIL_TYPES, start=1)}


class FeatureForm:
    """The inputs of one page; `values()` is a /predict record once `validate()` is true."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.fields: dict[str, BoundedNumber | ui.select] = {}
        with ui.grid().classes("w-full gap-x-6 gap-y-1 grid-cols-1 sm:grid-cols-2 md:grid-cols-3"):
            for column in NUMERIC_COLUMNS:
                low, high = NUMERIC_RANGES[column]
                self.fields[column] = BoundedNumber(
                    label=label_of(column),
                    min=low,
                    max=high,
                    step=1,
                    validation=_numeric_rules(column),
                ).props(f'hint="{low} to {high} {UNITS[column]}" outlined dense')
            self.fields["Wilderness_Area"] = ui.select(
                list(WILDERNESS_AREAS),
                label=label_of("Wilderness_Area"),
                validation=_choice_rules("Wilderness_Area"),
            ).props("outlined dense")
            self.fields["Soil_Type"] = ui.select(
                _soil_options(),
                label=label_of("Soil_Type"),
                with_input=True,
                validation=_choice_rules("Soil_Type"),
            ).props("outlined dense")
        for column, element in self.fields.items():
            element.mark(column)
            if on_change is not None:
                element.on_value_change(lambda _: on_change())
        assert tuple(self.fields) == FEATURE_COLUMNS

    def fill(self, record: dict[str, int | str]) -> None:
        for column in FEATURE_COLUMNS:
            self.fields[column].value = record[column]

    def raw_values(self) -> dict[str, object]:
        """What the inputs hold now, checked or not."""
        return {column: element.value for column, element in self.fields.items()}

    def validate(self) -> bool:
        """Check every field (so every problem is shown at once)."""
        results = [element.validate() for element in self.fields.values()]
        return all(results)

    def invalid_fields(self) -> list[str]:
        return [column for column, element in self.fields.items() if element.error]

    def values(self) -> dict[str, int | str]:
        record: dict[str, int | str] = {}
        for column in NUMERIC_COLUMNS:
            record[column] = int(self.fields[column].value)
        for column in CATEGORICAL_COLUMNS:
            record[column] = str(self.fields[column].value)
        return record

    def show_error(self, column: str, message: str) -> bool:
        """Put a message from the API at its field; False if the API named no known field."""
        element = self.fields.get(column)
        if element is None:
            return False
        element.error = message
        return True
