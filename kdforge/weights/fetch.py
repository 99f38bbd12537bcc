"""Put a catalogue entry's files where the recipes expect them: download, check, then
convert (``kdforge convert``) or unpack as the entry says."""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from kdforge.errors import CheckpointError
from kdforge.weights.catalogue import Entry
from kdforge.weights.download import download

__all__ = ["fetch", "is_present", "unpack_tar"]

# tarfile's "data" filter (Python >= 3.10.12) on top of the member checks below
_SAFE = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def is_present(entry: Entry, root: str | Path = ".") -> bool:
    """Whether every file of ``entry`` is in place under ``root``."""
    return all((Path(root) / p).is_file() for p in entry.paths)


def fetch(entry: Entry, root: str | Path = ".", progress: bool = True) -> list[Path]:
    """Download ``entry`` and write its files under ``root``; files already there are kept.

    Returns:
        The entry's files (``root / path`` for each of ``entry.paths``).

    Raises:
        CheckpointError: a download that fails or does not match its hash, a conversion
            that fails, an archive that lacks a file the recipes expect.
    """
    root = Path(root)
    targets = [root / p for p in entry.paths]
    missing = [t for t in targets if not t.is_file()]
    if not missing:
        return targets
    raw = download(entry.url, root / entry.download_path, entry.sha256, progress)
    if entry.convert == "untar":
        unpack_tar(raw, raw.parent)
        if lacking := [str(t) for t in missing if not t.is_file()]:
            raise CheckpointError(f"{raw} does not hold {', '.join(lacking)}")
    elif entry.convert != "none":
        from kdforge.commands.convert import convert

        for target in missing:
            convert(entry.convert, raw, target)
    return targets


def unpack_tar(archive: str | Path, into: str | Path) -> list[Path]:
    """Extract the files of ``archive`` under ``into``, each renamed into place only once the
    whole archive has been read (a broken archive leaves no partial tree).

    Raises:
        CheckpointError: an unreadable archive, or a member that is not a plain file or
            folder or would land outside ``into``.
    """
    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=into) as tmp:
        try:
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    name = PurePosixPath(member.name)
                    if (
                        name.is_absolute()
                        or ".." in name.parts
                        or not (member.isfile() or member.isdir())
                    ):
                        raise CheckpointError(f"{archive}: refusing member {member.name!r}")
                tar.extractall(tmp, **_SAFE)
        except (tarfile.TarError, OSError) as err:
            raise CheckpointError(
                f"{archive} cannot be unpacked ({err}); delete it and fetch again"
            ) from None
        written = []
        for src in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
            dst = into / src.relative_to(tmp)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            written.append(dst)
    return written
