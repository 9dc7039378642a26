"""The asv benchmark suite of pytest-minerva (see ``asv.conf.json`` and the README's asv section)."""
