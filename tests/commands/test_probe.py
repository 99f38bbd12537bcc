"""``kdforge probe --kwarg ROLE.KEY=VALUE``: models that need builder keywords."""

from __future__ import annotations

import pytest

from kdforge.cli import main
from kdforge.data.shapes import SHAPE_CLASSES

# a tiny Grounding DINO R-18 (64 wide, one layer each)
TINY = [
    "num_queries=30", "embed_dims=64", "num_encoder_layers=1", "num_decoder_layers=1",
    "feedforward_channels=64", "num_dn_queries=10", "text_feedforward_channels=64",
    "fusion_embed_dim=64", "num_cp=0", f"num_classes={len(SHAPE_CLASSES)}",
    f"class_names=[{', '.join(SHAPE_CLASSES)}]",
]  # fmt: skip


def test_probe_builds_grounding_dino_with_keywords(tiny_bert, capsys):
    kwargs = [f"student.{kw}" for kw in [*TINY, f"text_folder={tiny_bert}"]]
    main(["probe", "--student", "grounding_dino_r18", "--input-size", "3", "64", "64",
          "--kwarg", *kwargs])  # fmt: skip
    out = capsys.readouterr().out
    assert "student: grounding_dino_r18 on input 1x3x64x64" in out
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines()[2:] if line.strip()}
    # three ChannelMapper levels of the backbone's strides 8, 16, 32 and one extra at 64
    assert [rows[f"neck.convs.{i}"] for i in range(3)] == ["1x64x8x8", "1x64x4x4", "1x64x2x2"]
    assert rows["neck.extra_convs.0"] == "1x64x1x1"


def test_a_bad_keyword_is_the_builders_one_line_error():
    with pytest.raises(SystemExit, match="resnet8 cannot be built with {'bogus': 1}"):
        main(["probe", "--student", "resnet8", "--kwarg", "student.bogus=1"])


@pytest.mark.parametrize(
    ("kwarg", "message"),
    [
        ("bogus=1", "expected teacher.KEY=VALUE or student.KEY=VALUE, got 'bogus=1'"),
        ("teacher.depth=8", "no teacher to probe; name it with --teacher"),
    ],
)
def test_a_keyword_without_its_model_is_refused(kwarg, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["probe", "--student", "resnet8", "--kwarg", kwarg])
    assert message in str(info.value) + capsys.readouterr().err  # ConfigError or argparse
