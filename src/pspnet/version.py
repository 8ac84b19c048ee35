"""pspnet's version, in one place: the package, its metadata (pyproject.toml reads it) and the caches
keyed on it (``auto``'s probe) all take it from here, so an editable install never reports a stale one."""

__version__ = "0.9.0"
