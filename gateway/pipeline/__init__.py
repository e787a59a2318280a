"""The alignment pipeline: arm choice, then rewrite → backend → align, as an explicit sequence of steps."""
