"""``download``: whole files, resumed files, servers without Range, hash mismatches, errors."""

from __future__ import annotations

import hashlib
import os

import pytest

from kdforge.errors import CheckpointError
from kdforge.weights import CATALOGUE, fetch
from kdforge.weights.download import download

from .conftest import OFFLINE

BODY = os.urandom(300_000)  # a few read chunks' worth would hide nothing: 1 MiB chunks
SHA = hashlib.sha256(BODY).hexdigest()


def test_a_file_is_downloaded_and_checked(server, tmp_path):
    url = server.serve(f"/w/model-{SHA[:8]}.pth", BODY)
    dest = download(url, tmp_path / "a" / "model.pth", SHA[:8], progress=False)
    assert dest.read_bytes() == BODY
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.pth"]  # no .part left


def test_an_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    url = server.serve("/w/big.pth", BODY)
    server.cut_after["/w/big.pth"] = 120_000  # the connection drops after that
    dest = tmp_path / "big.pth"
    with pytest.raises(CheckpointError, match="broke off after 120000 of 300000 bytes.*resume"):
        download(url, dest, SHA[:8], progress=False)
    part = tmp_path / "big.pth.part"
    assert part.stat().st_size == 120_000 and not dest.exists()

    download(url, dest, SHA[:8], progress=False)
    assert server.requests[-1] == ("/w/big.pth", "bytes=120000-")
    assert dest.read_bytes() == BODY and not part.exists()


def test_a_server_ignoring_range_restarts_the_file(server, tmp_path):
    url = server.serve("/w/model.pth", BODY)
    server.ignore_range = True
    (tmp_path / "model.pth.part").write_bytes(b"x" * 1000)
    dest = download(url, tmp_path / "model.pth", SHA[:12], progress=False)
    assert server.requests[-1][1] == "bytes=1000-"
    assert dest.read_bytes() == BODY  # not the old bytes followed by the whole file


def test_a_whole_part_file_is_finished_without_downloading_again(server, tmp_path):
    url = server.serve("/w/model.pth", BODY)
    (tmp_path / "model.pth.part").write_bytes(BODY)  # the server answers 416: nothing left
    dest = download(url, tmp_path / "model.pth", SHA[:8], progress=False)
    assert dest.read_bytes() == BODY


def test_a_hash_mismatch_is_one_line_and_removes_the_part(server, tmp_path):
    url = server.serve("/w/model-0123abcd.pth", BODY)
    with pytest.raises(CheckpointError) as info:
        download(url, tmp_path / "model.pth", "0123abcd", progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert f"sha256 {SHA[:8]}... does not match the 0123abcd" in message
    assert "removed it; run the command again" in message
    assert list(tmp_path.iterdir()) == []  # neither the file nor a .part to resume


def test_an_existing_file_is_checked_not_downloaded(server, tmp_path):
    url = server.serve("/w/model.pth", BODY)
    dest = tmp_path / "model.pth"
    dest.write_bytes(b"something else")
    with pytest.raises(CheckpointError, match="delete it and run the command again"):
        download(url, dest, SHA[:8], progress=False)
    assert dest.read_bytes() == b"something else" and server.requests == []
    dest.write_bytes(BODY)
    assert download(url, dest, SHA[:8], progress=False) == dest and server.requests == []


def test_http_errors_are_one_line(server, tmp_path):
    url = server.serve("/w/model.pth", BODY)
    with pytest.raises(CheckpointError, match=r"cannot download .*/w/missing.pth: HTTP 404"):
        download(url.replace("model", "missing"), tmp_path / "m.pth", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_the_real_catalogue_is_not_contacted_by_tests(tmp_path):
    """The guard of conftest.py is on: a real entry fails before any byte leaves."""
    entry = next(e for e in CATALOGUE if e.name == "resnet18")
    with pytest.raises(CheckpointError, match=f"download.pytorch.org.*{OFFLINE}"):
        fetch(entry, tmp_path, progress=False)
