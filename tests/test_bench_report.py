"""benchmarks/report.py: a benchmark rewrites only its own block of docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("report", REPO_ROOT / "benchmarks" / "report.py")
assert _spec and _spec.loader
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)

BEGIN, END = report.markers("## Pipeline")
DOC = f"""# Benchmarks

## Pipeline

{BEGIN}

old table

{END}

Hand-kept before/after table.

## Other

Other text.
"""


def test_only_the_block_is_replaced() -> None:
    new = report.replace_block(DOC, "## Pipeline", "new table")
    assert "old table" not in new
    assert "new table" in new
    assert new.replace("new table", "old table") == DOC


def test_a_section_without_a_block_keeps_its_text_below_the_new_block() -> None:
    doc = "# Benchmarks\n\n## Pipeline\n\nwritten before the markers\n\n## Other\n"
    new = report.replace_block(doc, "## Pipeline", "fresh")
    assert new.index(BEGIN) < new.index("fresh") < new.index(END)
    assert new.index(END) < new.index("written before the markers") < new.index("## Other")


def test_a_missing_section_is_added_at_the_end() -> None:
    new = report.replace_block("# Benchmarks\n", "## Pipeline", "first run")
    assert new.endswith(f"## Pipeline\n\n{BEGIN}\n\nfirst run\n\n{END}\n")
    assert report.replace_block(new, "## Pipeline", "second run").count("## Pipeline") == 1


def test_the_committed_doc_has_a_block_per_benchmark() -> None:
    doc = (REPO_ROOT / "docs" / "benchmarks.md").read_text()
    for heading in ("## Data API", "## Inference API", "## Pipeline"):
        begin, end = report.markers(heading)
        assert doc.index(heading) < doc.index(begin) < doc.index(end)
