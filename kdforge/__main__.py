"""``python -m kdforge`` (and ``torchrun -m kdforge``) is the ``kdforge`` command."""

from kdforge.cli import main

main()
