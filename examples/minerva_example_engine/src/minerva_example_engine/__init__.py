"""An example third-party engine for pytest-minerva (see ``hooks`` and ``engine``)."""

__version__ = "0.1.0"
