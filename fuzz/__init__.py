"""Coverage-guided fuzzing of the service's parsers with atheris (libFuzzer for Python): `python -m fuzz --help`."""
