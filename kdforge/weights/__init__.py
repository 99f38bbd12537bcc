"""Public teacher and backbone checkpoints the recipes name: a catalogue, and fetching them.

``kdforge weights`` lists :data:`CATALOGUE`; ``kdforge weights fetch NAME`` downloads an entry
(resumable, hash-checked) and converts or unpacks it to the paths the recipes expect.
"""

from kdforge.weights.catalogue import CATALOGUE, EXCLUDED, Entry, entry_for_path, get_entries
from kdforge.weights.download import download
from kdforge.weights.fetch import fetch, is_present
from kdforge.weights.recipes import recipe_weights

__all__ = [
    "CATALOGUE",
    "EXCLUDED",
    "Entry",
    "download",
    "entry_for_path",
    "fetch",
    "get_entries",
    "is_present",
    "recipe_weights",
]
