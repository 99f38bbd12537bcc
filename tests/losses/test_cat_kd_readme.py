"""The README states CAT-KD's default for the student's classifier bias, next to the method
table, as the term's signature has it."""

import inspect
from pathlib import Path

from kdforge.losses import CATKDLoss

README = Path(__file__).parents[2] / "README.md"


def test_the_readme_states_the_student_bias_default_after_the_method_table():
    paragraphs = README.read_text().split("\n\n")
    (table,) = [i for i, text in enumerate(paragraphs) if "| CAT-KD (" in text]
    note = " ".join(paragraphs[table + 1].split())
    default = inspect.signature(CATKDLoss).parameters["student_bias"].default
    assert note.startswith("CAT-KD ")
    assert f"student_bias: {str(default).lower()}" in note
    assert "zeroes and freezes the student's classifier bias" in note
