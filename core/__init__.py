"""The bottom layer every other package may import: shared statistics (and nothing that imports gateway/, models/
or train/)."""
