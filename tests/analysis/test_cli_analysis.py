"""The analysis commands are listed and document themselves."""

from __future__ import annotations

import pytest

from kdforge.cli import main

COMMANDS = [["confusion-matrix"], ["robustness"], ["compare"], ["visualize", "features"]]


def test_help_lists_the_analysis_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("confusion-matrix", "robustness", "compare"):
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_documents_itself(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert "usage: kdforge " + " ".join(command) in capsys.readouterr().out


def test_export_help_mentions_onnx(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--format {safetensors,onnx}" in capsys.readouterr().out
