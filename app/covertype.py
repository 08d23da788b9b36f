"""The Covertype data contract: the 13 columns in the course's order and their valid values.

Ranges follow the UCI description (covtype.info); the data API, ingestion and the inference API
all validate against this one definition.
"""

from __future__ import annotations

from typing import Final

NUMERIC_COLUMNS: Final[tuple[str, ...]] = (
    "Elevation",
    "Aspect",
    "Slope",
    "Horizontal_Distance_To_Hydrology",
    "Vertical_Distance_To_Hydrology",
    "Horizontal_Distance_To_Roadways",
    "Hillshade_9am",
    "Hillshade_Noon",
    "Hillshade_3pm",
    "Horizontal_Distance_To_Fire_Points",
)
CATEGORICAL_COLUMNS: Final[tuple[str, ...]] = ("Wilderness_Area", "Soil_Type")
FEATURE_COLUMNS: Final[tuple[str, ...]] = NUMERIC_COLUMNS + CATEGORICAL_COLUMNS
TARGET_COLUMN: Final = "Cover_Type"
COLUMNS: Final[tuple[str, ...]] = FEATURE_COLUMNS + (TARGET_COLUMN,)

# Inclusive integer ranges. Elevation and the distances are in metres; UCI gives no hard bound
# for them, so the bounds are physical (Colorado's terrain) and wide enough for every real row.
NUMERIC_RANGES: Final[dict[str, tuple[int, int]]] = {
    "Elevation": (0, 5000),
    "Aspect": (0, 360),
    "Slope": (0, 90),
    "Horizontal_Distance_To_Hydrology": (0, 10000),
    "Vertical_Distance_To_Hydrology": (-1000, 1000),
    "Horizontal_Distance_To_Roadways": (0, 10000),
    "Hillshade_9am": (0, 255),
    "Hillshade_Noon": (0, 255),
    "Hillshade_3pm": (0, 255),
    "Horizontal_Distance_To_Fire_Points": (0, 10000),
}

# Spelled as in the course data ("Commanche").
WILDERNESS_AREAS: Final[tuple[str, ...]] = ("Rawah", "Neota", "Commanche", "Cache")

# USFS ELU codes of UCI's Soil_Type1..40, in that order, prefixed with "C" as in the course data.
SOIL_TYPES: Final[tuple[str, ...]] = (
    "C2702",
    "C2703",
    "C2704",
    "C2705",
    "C2706",
    "C2717",
    "C3501",
    "C3502",
    "C4201",
    "C4703",
    "C4704",
    "C4744",
    "C4758",
    "C5101",
    "C5151",
    "C6101",
    "C6102",
    "C6731",
    "C7101",
    "C7102",
    "C7103",
    "C7201",
    "C7202",
    "C7700",
    "C7701",
    "C7702",
    "C7709",
    "C7710",
    "C7745",
    "C7746",
    "C7755",
    "C7756",
    "C7757",
    "C7790",
    "C8703",
    "C8707",
    "C8708",
    "C8771",
    "C8772",
    "C8776",
)

COVER_TYPES: Final[dict[int, str]] = {
    1: "Spruce/Fir",
    2: "Lodgepole Pine",
    3: "Ponderosa Pine",
    4: "Cottonwood/Willow",
    5: "Aspen",
    6: "Douglas-fir",
    7: "Krummholz",
}
