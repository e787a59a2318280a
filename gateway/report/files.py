"""Writing a report's files: ``report.md`` and, where matplotlib is installed, ``report.png`` beside it.

Shared by ``aligngate ab report`` and ``aligngate eval``: the chart is drawn first (a drawer returns ``None`` when it
wrote the PNG, else a note saying why not), a stale chart of an earlier run is never left beside a report without
one, and the Markdown gets the note.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ReportFiles:
    markdown: Path
    png: Path | None
    note: str | None


def write_report_files(
    out_dir: Path, draw_png: Callable[[Path], str | None], render_markdown: Callable[[str | None], str]
) -> ReportFiles:
    """Write ``report.png`` with ``draw_png`` and ``report.md`` with ``render_markdown(note)`` into ``out_dir``
    (created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "report.png"
    note = draw_png(png)
    if note is not None:
        png.unlink(missing_ok=True)  # never leave an earlier run's chart beside this report
    markdown = out_dir / "report.md"
    markdown.write_text(render_markdown(note), encoding="utf-8")
    return ReportFiles(markdown, None if note is not None else png, note)
