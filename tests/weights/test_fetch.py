"""``fetch``: files used as published, unpacked from a tar laid out like mdistiller's
``cifar_teachers.tar``, or converted from an mmdetection checkpoint, all from a local server."""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import replace

import pytest
import torch

from kdforge import create_model, load_model
from kdforge.errors import CheckpointError
from kdforge.weights import CATALOGUE, Entry, fetch, is_present
from kdforge.weights.fetch import unpack_tar


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _published(server, folder: str, stem: str, body: bytes, ext: str = "pth") -> str:
    """Serve ``body`` as ``<stem>-<its sha256 prefix>.<ext>``, as torchvision/OpenMMLab name
    their files; returns the URL."""
    return server.serve(f"/{folder}/{stem}-{hashlib.sha256(body).hexdigest()[:8]}.{ext}", body)


def test_a_file_used_as_published_lands_where_the_recipes_expect_it(server, tmp_path):
    real = next(e for e in CATALOGUE if e.name == "resnet34")
    weights = create_model("resnet8", num_classes=10).state_dict()
    entry = replace(real, url=_published(server, "models", "resnet34", _torch_bytes(weights)))
    assert entry.sha256 and not is_present(entry, tmp_path)
    [path] = fetch(entry, tmp_path, progress=False)
    assert path == tmp_path / "download_ckpts/imagenet/resnet34-333f7ec4.pth"
    assert is_present(entry, tmp_path)
    assert torch.equal(torch.load(path)["fc.weight"], weights["fc.weight"])
    requests = len(server.requests)
    assert fetch(entry, tmp_path, progress=False) == [path]
    assert len(server.requests) == requests  # present: nothing downloaded again


def test_mdistillers_tar_is_unpacked_into_download_ckpts(server, tmp_path):
    real = next(e for e in CATALOGUE if e.name == "cifar_teachers")
    teacher = create_model("resnet56", num_classes=100)
    members = {p.removeprefix("download_ckpts/"): b"placeholder" for p in real.paths}
    resnet56 = "cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth"
    members[resnet56] = _torch_bytes({"model": teacher.state_dict(), "best_acc": 72.3})
    entry = replace(real, url=server.serve("/release/cifar_teachers.tar", _tar(members)))
    assert entry.sha256 is None  # mdistiller's name carries no hash

    paths = fetch(entry, tmp_path, progress=False)
    assert all(p.is_file() for p in paths) and is_present(entry, tmp_path)
    loaded = create_model("resnet56", num_classes=100, pretrained=str(tmp_path / real.paths[0]))
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in teacher.state_dict().items())
    leftovers = [p.name for p in (tmp_path / "download_ckpts").iterdir()]
    assert sorted(leftovers) == ["cifar_teachers", "cifar_teachers.tar"]  # no temporary folder


def test_a_tar_without_a_file_the_recipes_need_is_an_error(server, tmp_path):
    real = next(e for e in CATALOGUE if e.name == "cifar_teachers")
    members = {"cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth": b"x"}
    entry = replace(real, url=server.serve("/release/cifar_teachers.tar", _tar(members)))
    with pytest.raises(CheckpointError, match="cifar_teachers.tar does not hold .*resnet110"):
        fetch(entry, tmp_path, progress=False)


@pytest.mark.parametrize("member", ["../outside.pth", "/abs/outside.pth"])
def test_a_tar_member_outside_the_folder_is_refused(member, tmp_path):
    archive = tmp_path / "evil.tar"
    archive.write_bytes(_tar({"cifar_teachers/ok.pth": b"x", member: b"y"}))
    with pytest.raises(CheckpointError, match="refusing member"):
        unpack_tar(archive, tmp_path / "into")
    assert not (tmp_path / "outside.pth").exists()
    assert [p for p in (tmp_path / "into").rglob("*") if p.is_file()] == []  # nothing half-done


SMALL = {"fpn_channels": 32, "feat_channels": 64, "stacked_convs": 1}


def test_an_mmdetection_checkpoint_is_converted_to_every_path(server, tmp_path, capsys):
    detector = create_model("retinanet_r18_fpn", num_classes=3, **SMALL).eval()
    body = _torch_bytes({"meta": {"mmdet_version": "2.25.0"}, "state_dict": detector.state_dict()})
    stem = "retinanet/retinanet_r18_fpn_1x_coco/retinanet_r18_fpn_1x_coco_20220407_171055"
    url = _published(server, "mmdetection", stem, body)
    paths = ("checkpoints/coco/a.safetensors", "checkpoints/coco/b.safetensors")
    entry = Entry("retinanet_r18", url, "mmdet", paths, "retinanet_r18_fpn", "test")
    written = fetch(entry, tmp_path, progress=False)
    assert written == [tmp_path / p for p in paths]
    assert (tmp_path / "download_ckpts" / entry.filename).is_file()  # the publisher's file kept
    for path in written:
        rebuilt = load_model(path)
        assert type(rebuilt) is type(detector)
        for key, value in detector.state_dict().items():
            assert torch.equal(rebuilt.state_dict()[key], value), key
    assert "retinanet_r18_fpn" in capsys.readouterr().out  # kdforge convert's report
    (tmp_path / paths[1]).unlink()  # one converted file lost: converted again, not downloaded
    requests = len(server.requests)
    fetch(entry, tmp_path, progress=False)
    assert (tmp_path / paths[1]).is_file() and len(server.requests) == requests
