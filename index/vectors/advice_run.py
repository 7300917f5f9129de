"""``python -m index.vectors.advice_run DIR``: index advice measured in a process of its own.

FAISS trains and builds in C++ that no other thread can interrupt, and an advice may
build a dozen indexes; run here, the service can stop it at its deadline, when its
client leaves or when the server shuts down, by ending the process. ``DIR`` holds
``sample.npz`` (labels, vectors) and ``args.json`` (targets, specs, gpu, nprobe); the
answer is one JSON line on stdout: ``{"answer": ...}`` or ``{"invalid": message}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import InvalidIndexSpec
from index.vectors.advice import advise
from index.vectors.faiss_backends import FaissBackends


def run(folder: Path) -> dict[str, Any]:
    args = json.loads((folder / "args.json").read_text())
    with np.load(folder / "sample.npz") as data:
        labels, vectors = data["labels"], data["vectors"]
    backends = FaissBackends(use_gpu=args["gpu"], nprobe=args["nprobe"])
    try:
        return {"answer": advise(backends, labels, vectors, args["targets"], args["specs"])}
    except InvalidIndexSpec as exc:
        return {"invalid": str(exc)}


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1]))))
