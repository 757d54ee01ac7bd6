"""The ``shamisa`` command line (typer): one module per group of commands, each of which parses its
options, calls one library function and prints the result (data on stdout, progress and messages on
stderr, exit codes from ``exit_codes.py``). Nothing in the library imports this package."""
