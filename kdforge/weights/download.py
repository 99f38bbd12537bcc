"""A resumable download: HTTP Range into ``<file>.part``, a sha256 check, then a rename."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.request
from pathlib import Path
from urllib.error import HTTPError, URLError

from tqdm import tqdm

from kdforge.errors import CheckpointError

__all__ = ["download", "sha256_of"]

_CHUNK = 1 << 20
_TIMEOUT_S = 60


def sha256_of(path: str | Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _open(url: str, offset: int):
    """The response to a GET of ``url`` from byte ``offset``; None when the server has
    nothing past ``offset`` (416: the partial file is already whole)."""
    headers = {"User-Agent": "kdforge"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except HTTPError as err:
        if err.code == 416 and offset:
            return None
        raise CheckpointError(f"cannot download {url}: HTTP {err.code} {err.reason}") from None
    except (URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise CheckpointError(f"cannot download {url}: {reason}; check the connection") from None


def _receive(url: str, part: Path, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (or restart it when the server ignores Range)."""
    offset = part.stat().st_size if part.is_file() else 0
    response = _open(url, offset)
    if response is None:
        return
    with response:
        if offset and response.status != 206:  # the whole file came back: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            disable=not progress,
        )
        received = offset
        try:
            with open(part, "ab" if offset else "wb") as f, bar:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:  # dropped, timed out, cut short
            raise CheckpointError(
                f"download of {url} broke off after {received} bytes ({err}); the partial file "
                f"{part} is kept: run the command again to resume"
            ) from None
    if total is not None and received < total:
        raise CheckpointError(
            f"download of {url} broke off after {received} of {total} bytes; the partial file "
            f"{part} is kept: run the command again to resume"
        )


def download(url: str, dest: str | Path, sha256: str | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (created only when complete and checked).

    The bytes go to ``dest.part``; a ``.part`` left by an interrupted call is resumed with an
    HTTP Range request (started over if the server ignores it). ``dest`` already there is
    checked, not downloaded again.

    Args:
        url: what to fetch.
        dest: the final file; its folder is created.
        sha256: a hex prefix the file's sha256 must start with (the hash of a
            ``name-<hash>.pth`` file name); None skips the check.
        progress: show a tqdm bar (size, rate, ETA) on stderr.

    Raises:
        CheckpointError: a network or HTTP error (the ``.part`` is kept for a resume), or a
            sha256 mismatch (the ``.part`` is removed: resuming it would keep the bad bytes).
    """
    dest = Path(dest)
    if dest.is_file():
        _check(dest, url, sha256, removed=None)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _receive(url, part, progress)
    _check(part, url, sha256, removed=part)
    os.replace(part, dest)
    return dest


def _check(path: Path, url: str, sha256: str | None, removed: Path | None) -> None:
    if sha256 is None:
        return
    digest = sha256_of(path)
    if digest.startswith(sha256.lower()):
        return
    if removed is not None:
        removed.unlink()
        fix = f"removed it; run the command again to download it anew (from {url})"
    else:
        fix = f"delete it and run the command again to download it from {url}"
    raise CheckpointError(
        f"{path}: sha256 {digest[: len(sha256)]}... does not match the {sha256} its publisher "
        f"gives (a corrupted download?); {fix}"
    )
