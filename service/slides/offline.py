"""``tessera slide``: one slide, in this process, with a progress bar."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from tqdm import tqdm

from service.slides.encoder import TileEncoder
from service.slides.pipeline import PipelineSettings, ProgressCallback, SlideOptions, process_slide

__all__ = ["run_slide"]


def run_slide(
    slide_path: str | Path,
    out_dir: str | Path,
    encoder: TileEncoder,
    options: SlideOptions | dict[str, Any] | None = None,
    progress: bool | ProgressCallback = True,
    *,
    settings: PipelineSettings | None = None,
    cancel: threading.Event | None = None,
    coords_file: str | Path | None = None,
) -> dict[str, Any]:
    """Tile and embed ``slide_path`` into ``out_dir``; returns the report (also ``report.json``).

    ``options`` is a :class:`SlideOptions` or its fields as a dict (validated: unknown keys and
    out-of-range values raise ``pydantic.ValidationError``). ``progress=True`` draws a tqdm bar
    on stderr; a callable receives ``(tiles_done, tiles_total)`` instead. Re-running into the
    same ``out_dir`` with the same options resumes an interrupted run. ``coords_file`` is a
    TRIDENT or CLAM coordinates file whose grid is embedded instead of our own.
    """
    if not isinstance(options, SlideOptions):
        options = SlideOptions.model_validate(options or {})
    if callable(progress):
        return process_slide(
            slide_path,
            out_dir,
            encoder,
            options,
            settings=settings,
            progress=progress,
            cancel=cancel,
            coords_file=coords_file,
        )
    if not progress:
        return process_slide(
            slide_path, out_dir, encoder, options, settings=settings, cancel=cancel, coords_file=coords_file
        )
    bar: tqdm[Any] | None = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=done, unit="tile", desc=Path(slide_path).name, dynamic_ncols=True)
        else:
            bar.update(done - bar.n)

    try:
        return process_slide(
            slide_path,
            out_dir,
            encoder,
            options,
            settings=settings,
            progress=update,
            cancel=cancel,
            coords_file=coords_file,
        )
    finally:
        if bar is not None:
            bar.close()
