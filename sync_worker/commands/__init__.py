"""One library function per command; the CLI is a thin layer over these."""
