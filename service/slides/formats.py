"""Slide formats beyond one file: DICOM series, multi-file slides, zip uploads.

OpenSlide (4.x, from the openslide-bin wheel) reads DICOM WSI (it is given any file of the
series and reads the others from the same folder), MIRAX ``.mrxs`` (the main file beside a
folder of the same name), Hamamatsu ``.vms``/``.vmu`` and the single-file formats. A slide can
therefore be:

- a file (``.svs``, ``.ndpi``, ``.mrxs`` with its folder beside it, ``.dcm`` of a series, ...);
- a folder holding one slide: a DICOM series, or a multi-file slide's main file with its data;
- a zip of either, uploaded: it is unpacked (safely: no absolute paths, no ``..``, bounded size
  and file count) into the job's folder and then located like a folder.

:func:`locate_slide` turns a folder into the file to open; :func:`extract_zip` unpacks an upload;
:func:`scan_folder` is the batch scan (slide files and DICOM-series folders). CZI is listed
because OpenSlide reads it where its build does; a file no backend reads is refused with the
backends' reasons, as for any other unreadable slide.
"""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

from service.errors import InvalidInput, PayloadTooLarge

__all__ = [
    "DICOM_SUFFIX",
    "MAIN_SUFFIXES",
    "SLIDE_SUFFIXES",
    "extract_zip",
    "is_dicom",
    "locate_slide",
    "scan_folder",
]

#: the file to open of a multi-file or single-file slide, in order of preference in a folder
MAIN_SUFFIXES = (
    ".mrxs",
    ".vms",
    ".vmu",
    ".svs",
    ".ndpi",
    ".scn",
    ".bif",
    ".svslide",
    ".qptiff",
    ".czi",
    ".tif",
    ".tiff",
)
DICOM_SUFFIX = ".dcm"
#: suffixes a slide file (or an upload) may have; ``.zip`` is an upload of a folder
SLIDE_SUFFIXES = frozenset({*MAIN_SUFFIXES, DICOM_SUFFIX, ".zip"})
#: most files a zip upload may hold (a MIRAX slide has tens, a DICOM series a handful)
MAX_ZIP_FILES = 10_000


def is_dicom(path: Path) -> bool:
    """A DICOM file: ``.dcm``, or the ``DICM`` magic at byte 128 (series often have no suffix)."""
    if path.suffix.lower() == DICOM_SUFFIX:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def locate_slide(path: Path) -> Path:
    """The file to open for ``path``: the path itself when it is a file; for a folder, its one
    slide's main file, or one file of its DICOM series. ``InvalidInput`` when a folder holds no
    slide, or several."""
    if not path.is_dir():
        return path
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    for suffix in MAIN_SUFFIXES:
        found = [p for p in files if p.suffix.lower() == suffix]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found[:5])
            raise InvalidInput(f"the folder {path.name} holds several slides ({names}): give one", param="slide")
    dicoms = [p for p in files if is_dicom(p)]
    if dicoms:
        folders = {p.parent for p in dicoms}
        if len(folders) > 1:
            raise InvalidInput(
                f"the DICOM files in {path.name} are spread over {len(folders)} folders: one series per folder",
                param="slide",
            )
        return dicoms[0]
    raise InvalidInput(
        f"the folder {path.name} holds no slide ({', '.join(MAIN_SUFFIXES)} or a DICOM series)", param="slide"
    )


def extract_zip(archive: Path, dest: Path, max_bytes: int) -> Path:
    """Unpack a zip upload into ``dest`` (created) and return ``dest``.

    Refused (``InvalidInput``): not a zip, absolute or ``..`` member names, links, more than
    :data:`MAX_ZIP_FILES` files; ``PayloadTooLarge`` when the unpacked size exceeds ``max_bytes``
    (checked from the directory first, then while writing, so a lying header cannot fill the disk).
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInput(f"the upload is not a readable zip: {exc}", param="slide") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > MAX_ZIP_FILES:
            raise InvalidInput(f"the zip holds {len(members)} files; the limit is {MAX_ZIP_FILES}", param="slide")
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            raise PayloadTooLarge(f"the zip unpacks to {declared} bytes; the limit is {max_bytes}", param="slide")
        dest.mkdir(parents=True, exist_ok=True)
        written = 0
        for member in members:
            target = _member_path(dest, member)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:
                        raise PayloadTooLarge(f"the zip unpacks to more than {max_bytes} bytes", param="slide")
                    out.write(chunk)
    return dest


def _member_path(dest: Path, member: zipfile.ZipInfo) -> Path:
    name = PurePosixPath(member.filename.replace("\\", "/"))
    if name.is_absolute() or ".." in name.parts or not name.parts or ":" in name.parts[0]:
        raise InvalidInput(f"the zip holds an unsafe path: {member.filename!r}", param="slide")
    if (member.external_attr >> 16) & 0o170000 == 0o120000:
        raise InvalidInput(f"the zip holds a link: {member.filename!r}", param="slide")
    return dest.joinpath(*name.parts)


def scan_folder(folder: Path) -> list[Path]:
    """The slides in a folder (not recursive into slides): slide files by suffix, and each
    sub-folder holding a DICOM series. A MIRAX data folder (beside its ``.mrxs``) is not a slide."""
    slides: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if (entry.is_file() and entry.suffix.lower() in MAIN_SUFFIXES) or (
            entry.is_dir() and not _is_mirax_data(entry) and any(is_dicom(p) for p in entry.iterdir() if p.is_file())
        ):
            slides.append(entry)
    loose_dicom = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == DICOM_SUFFIX]
    if loose_dicom:  # a folder that is itself a DICOM series: one slide
        slides.append(folder)
    return slides


def _is_mirax_data(folder: Path) -> bool:
    return any(folder.with_suffix(suffix).is_file() for suffix in (".mrxs", ".MRXS"))
