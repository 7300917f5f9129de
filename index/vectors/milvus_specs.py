"""Which Milvus index types a collection may use on the Milvus backend, with bounded
parameters, and how its metadata filters become Milvus filter expressions.

A spec is an index type, optionally followed by ``:`` and ``name=value`` pairs::

    FLAT                                  exact (the default)
    IVF_FLAT:nlist=1024                   inverted lists over full vectors
    IVF_SQ8:nlist=1024                    ... over 8-bit scalar codes
    IVF_PQ:nlist=1024,m=64,nbits=8        ... over product-quantised codes (m divides d)
    HNSW:M=16,efConstruction=200          graph over full vectors
    HNSW_SQ:M=16,efConstruction=200       graph over 8-bit scalar codes
    GPU_BRUTE_FORCE, GPU_IVF_FLAT:nlist=.., GPU_IVF_PQ:nlist=..,m=..,nbits=..,
    GPU_CAGRA:intermediate_graph_degree=128,graph_degree=64
                                          on a Milvus server with GPUs only

The normalised form (stored and shown) names every parameter, defaults filled in. FAISS's
``Flat`` is read as ``FLAT``, so a data dir made on the FAISS backend opens on this one.
"""

from __future__ import annotations

from typing import Any

from index.errors import InvalidIndexSpec

DEFAULT_SPEC = "FLAT"
MAX_SPEC_CHARS = 200

# type -> parameter -> (lowest, highest, default); a default of 0 means "from d" (PQ's m).
_NLIST = (1, 65536, 128)
_HNSW = {"M": (2, 128, 16), "efConstruction": (8, 2048, 200)}
_PQ = {"nlist": _NLIST, "m": (1, 4096, 0), "nbits": (1, 16, 8)}
TYPES: dict[str, dict[str, tuple[int, int, int]]] = {
    "FLAT": {},
    "IVF_FLAT": {"nlist": _NLIST},
    "IVF_SQ8": {"nlist": _NLIST},
    "IVF_PQ": _PQ,
    "HNSW": _HNSW,
    "HNSW_SQ": _HNSW,
    "GPU_BRUTE_FORCE": {},
    "GPU_IVF_FLAT": {"nlist": _NLIST},
    "GPU_IVF_PQ": _PQ,
    "GPU_CAGRA": {"intermediate_graph_degree": (8, 512, 128), "graph_degree": (8, 512, 64)},
}
EXACT_TYPES = ("FLAT", "GPU_BRUTE_FORCE")
LITE_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "HNSW_SQ")  # what Milvus Lite builds

GRAMMAR = "supported Milvus index types: " + ", ".join(
    t + (":" + ",".join(f"{p}=<{lo}..{hi}>" for p, (lo, hi, _) in params.items()) if params else "")
    for t, params in TYPES.items()
)


def parse_spec(spec: str | None, d: int, *, server: bool) -> str:
    """The normalised form of ``spec`` for dimension ``d`` (``InvalidIndexSpec`` otherwise);
    ``server``: a Milvus server (any type), not Milvus Lite (``LITE_TYPES``)."""
    if spec is None or spec.strip() in ("", "Flat"):
        return DEFAULT_SPEC
    if len(spec) > MAX_SPEC_CHARS:
        raise InvalidIndexSpec(f"index spec longer than {MAX_SPEC_CHARS} characters")
    named, _, rest = spec.strip().partition(":")
    kind = named.strip().upper()
    if kind not in TYPES:
        raise InvalidIndexSpec(f"unknown Milvus index type {named.strip()!r}; {GRAMMAR}")
    if kind not in LITE_TYPES and not server:
        raise InvalidIndexSpec(
            f"{kind} needs a Milvus server (XMODAL_MILVUS_URI=http://...); Milvus Lite, a "
            f"local file, builds {', '.join(LITE_TYPES)}"
        )
    allowed = TYPES[kind]
    given: dict[str, int] = {}
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        name, eq, value = pair.partition("=")
        name = name.strip()
        if not eq or name not in allowed:
            raise InvalidIndexSpec(
                f"{kind} takes {sorted(allowed) or 'no parameters'}, not {pair!r}"
            )
        if name in given:
            raise InvalidIndexSpec(f"{name} given twice in {spec!r}")
        lo, hi, _ = allowed[name]
        if not value.strip().isdigit() or not lo <= int(value) <= hi:
            raise InvalidIndexSpec(f"{kind} {name} must be an integer from {lo} to {hi}")
        given[name] = int(value)
    values = {}
    for name, (_, _, default) in allowed.items():
        values[name] = given.get(name, default or _default_m(d))
    if "m" in values and d % values["m"]:
        raise InvalidIndexSpec(f"{kind} m={values['m']} must divide the dimension {d}")
    if not values:
        return kind
    return kind + ":" + ",".join(f"{k}={v}" for k, v in values.items())


def spec_params(spec: str) -> tuple[str, dict[str, int]]:
    """The index type and parameters of a normalised spec."""
    kind, _, rest = spec.partition(":")
    params = {}
    for pair in filter(None, rest.split(",")):
        name, _, value = pair.partition("=")
        params[name] = int(value)
    return kind, params


def search_params(spec: str, k: int, nprobe: int | None) -> dict[str, Any]:
    """What a search of an index built from ``spec`` asks for, ``k`` hits deep."""
    kind, params = spec_params(spec)
    if "nlist" in params:
        nlist = params["nlist"]
        return {"nprobe": max(1, min(nlist, nprobe or max(8, nlist // 16)))}
    if kind.startswith("HNSW"):
        return {"ef": max(64, k)}
    if kind == "GPU_CAGRA":
        return {"itopk_size": max(64, k)}
    return {}


def _default_m(d: int) -> int:
    """PQ sub-quantizers when none are named: 8 dimensions each where that divides d."""
    for m in (d // 8, d // 4, d // 2, d):
        if m >= 1 and d % m == 0:
            return m
    return 1
