"""HTTP layer: the only package that imports fastapi. Wires models and index together."""
