"""The bottom layer every other package may import: shared statistics (:mod:`core.stats`) and recipes, YAML +
``key=value`` overrides → any dataclass (:mod:`core.recipe`); nothing here imports gateway/, models/ or train/."""
