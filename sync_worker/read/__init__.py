"""Reading: export files and notes files into frames of text cells."""
