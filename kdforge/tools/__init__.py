"""Tools around training: layer probing, export of the student."""
