"""The ``perturbkit`` command line: thin argument parsing on top of the public API.

``main.py`` parses arguments and turns errors into one line and an exit code;
``bounds_cmd.py`` and ``demo.py`` hold the two commands; ``io.py`` reads models and
inputs and writes the JSON record.
"""
