"""ECharts options for the three charts, as plain data (the tests read them back)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.covertype import COVER_TYPES

CLASS_NAMES: tuple[str, ...] = tuple(COVER_TYPES[k] for k in sorted(COVER_TYPES))
PROMOTED_COLOR = "#2e7d32"
MACRO_F1_COLOR = "#66bb6a"
NOT_PROMOTED_COLOR = "#9e9e9e"
HIGHLIGHT_COLOR = "#1565c0"
CLASS_COLORS = ("#1b5e20", "#43a047", "#f9a825", "#6d4c41", "#8e24aa", "#00838f", "#546e7a")


def probabilities(probs: Mapping[str, float], predicted: str) -> dict[str, Any]:
    """One bar per class (in class-number order), the predicted one highlighted."""
    data = [
        {
            "value": round(float(probs.get(name, 0.0)), 4),
            "itemStyle": {"color": HIGHLIGHT_COLOR if name == predicted else "#90caf9"},
        }
        for name in CLASS_NAMES
    ]
    return {
        "grid": {"left": 130, "right": 40, "top": 10, "bottom": 30},
        "tooltip": {"trigger": "axis", "axisPointer": {"type": "shadow"}},
        "xAxis": {"type": "value", "min": 0, "max": 1},
        "yAxis": {"type": "category", "data": list(CLASS_NAMES), "inverse": True},
        "series": [
            {
                "name": "probability",
                "type": "bar",
                "data": data,
                "label": {"show": True, "position": "right", "formatter": "{c}"},
            }
        ],
    }


def version_scores(versions: Sequence[Any], alias: str) -> dict[str, Any]:
    """Held-out accuracy and macro-F1 of every version (ui.registry_client.VersionSummary).

    Promoted versions are drawn in full colour with a pin above them; the others are grey;
    the version that holds `alias` now is named on the axis."""

    def label(v: Any) -> str:
        return f"v{v.version}\n({alias})" if alias in v.aliases else f"v{v.version}"

    def bar(v: Any, value: float | None, color: str) -> dict[str, Any]:
        return {
            "value": None if value is None else round(value, 4),
            "itemStyle": {"color": color if v.promoted else NOT_PROMOTED_COLOR},
            "decision": v.decision or "unknown",
        }

    return {
        "legend": {"data": ["accuracy", "macro-F1", "promoted"], "top": 0},
        "tooltip": {"trigger": "axis"},
        "grid": {"left": 50, "right": 20, "top": 40, "bottom": 50},
        "xAxis": {"type": "category", "data": [label(v) for v in versions]},
        "yAxis": {"type": "value", "min": 0, "max": 1, "name": "held-out"},
        "series": [
            {
                "name": "accuracy",
                "type": "bar",
                "itemStyle": {"color": PROMOTED_COLOR},
                "data": [bar(v, v.accuracy, PROMOTED_COLOR) for v in versions],
            },
            {
                "name": "macro-F1",
                "type": "bar",
                "itemStyle": {"color": MACRO_F1_COLOR},
                "data": [bar(v, v.macro_f1, MACRO_F1_COLOR) for v in versions],
            },
            {
                "name": "promoted",
                "type": "scatter",
                "symbol": "pin",
                "symbolSize": 28,
                "itemStyle": {"color": PROMOTED_COLOR},
                "data": [
                    [label(v), round(max(v.accuracy or 0.0, v.macro_f1 or 0.0), 4)]
                    if v.promoted
                    else None
                    for v in versions
                ],
            },
        ],
    }


def class_distribution(batches: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stored rows per batch, stacked by cover type (batch_statistics' cover_type_N)."""
    return {
        "legend": {"data": list(CLASS_NAMES), "type": "scroll", "top": 0},
        "tooltip": {"trigger": "axis", "axisPointer": {"type": "shadow"}},
        "grid": {"left": 60, "right": 20, "top": 40, "bottom": 40},
        "xAxis": {
            "type": "category",
            "name": "batch",
            "data": [str(b["batch_number"]) for b in batches],
        },
        "yAxis": {"type": "value", "name": "rows"},
        "series": [
            {
                "name": name,
                "type": "bar",
                "stack": "rows",
                "itemStyle": {"color": CLASS_COLORS[number - 1]},
                "data": [int(b[f"cover_type_{number}"]) for b in batches],
            }
            for number, name in sorted(COVER_TYPES.items())
        ],
    }
