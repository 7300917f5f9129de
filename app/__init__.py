"""The service in floors: ``api`` (HTTP: the only floor that imports fastapi), ``service``
(settings, wiring, engine, retrieval, jobs), ``cli`` (the ``xmodal`` command and the demo),
``web`` (the static page). It wires ``models`` and ``index`` together."""
