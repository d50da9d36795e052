"""The release number, in a leaf: the CLI and the sender read it without importing the API."""

__version__ = "0.2.0"
