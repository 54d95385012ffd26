"""One module per ``segany`` subcommand; see :mod:`segany.cli`."""
