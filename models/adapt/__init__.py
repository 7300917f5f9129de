"""Adapting the encoders to a user's own pairs: the methods (``methods``: names and
settings, no torch), one module per method, ``run`` to pick and evaluate one, ``pairs``
to read them, ``reembed`` for an activation's plan."""
