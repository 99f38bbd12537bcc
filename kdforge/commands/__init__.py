"""The ``kdforge`` command's verbs, one module each; nothing in the library imports them.

Every command module follows one protocol, which :mod:`kdforge.cli` reads:

* ``HELP: str``: one line for ``kdforge --help``;
* ``DESCRIPTION: str`` (optional): the paragraph of ``kdforge <verb> --help``;
* ``add_arguments(parser: argparse.ArgumentParser) -> None``: declare the verb's options;
* ``run(args: argparse.Namespace) -> None``: do the work.

At module level a command imports the standard library (and the shared options of
:mod:`._args`) only; torch and the library are imported inside ``run``, so that building
the parser (``kdforge --help``) stays cheap. :mod:`._runs` reads run folders for
``compare`` and the demos.
"""
