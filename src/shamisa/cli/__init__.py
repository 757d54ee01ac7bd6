"""The ``shamisa`` command line: thin typer commands over the library (see ``app.py``)."""
