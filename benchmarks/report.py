"""Where a benchmark writes its results: its own marked block of docs/benchmarks.md.

Each benchmark owns the lines between two HTML comments under its section's heading and
rewrites only those. Text around the block (run lists, before/after tables, notes kept by
hand) stays as it is: the benchmarks used to replace the whole section and deleted it.
"""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
_NEW_DOC = "# Benchmarks\n\nEach section's marked block is rewritten by the command it names.\n"


def markers(heading: str) -> tuple[str, str]:
    """The begin and end comments of the block under `heading` (e.g. "## Pipeline")."""
    name = heading.lstrip("# ").strip()
    return (
        f"<!-- begin: written by its benchmark ({name}); edit outside this block -->",
        f"<!-- end: {name} -->",
    )


def replace_block(current: str, heading: str, body: str) -> str:
    """`current` with the block under `heading` holding `body`. A section without a block gets
    one right after its heading (whatever it held stays below it); a missing section is added at
    the end."""
    begin, end = markers(heading)
    block = f"{begin}\n\n{body.strip(chr(10))}\n\n{end}"
    if begin in current and end in current.split(begin, 1)[1]:
        before, rest = current.split(begin, 1)
        return before + block + rest.split(end, 1)[1]
    lines = current.split("\n")
    if heading in lines:
        at = lines.index(heading) + 1
        return "\n".join([*lines[:at], "", block, *lines[at:]])
    return current.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"


def write_results(heading: str, body: str, doc: Path = DOC) -> None:
    """Rewrite the block under `heading` in `doc` (created if missing) with `body`."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    current = doc.read_text() if doc.exists() else _NEW_DOC
    doc.write_text(replace_block(current, heading, body))
