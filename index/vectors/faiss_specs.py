"""Which FAISS factory strings a collection may use: a small grammar with bounded numbers.

``faiss.index_factory`` accepts far more than is safe to take from a request: ``HNSW1``
builds, then crashes the process on its first add; ``IVF100000000,Flat`` allocates
gigabytes; some strings build indexes whose searches reject our search parameters. So a
spec is parsed here first, and only these families reach FAISS:

    spec   := [pre ","] body
    pre    := "PCA" n | "PCAR" n | "OPQ" m ["_" n]          (n <= dimension)
    body   := "Flat" | sq | pq | hnsw | ivf
    sq     := "SQ4" | "SQ6" | "SQ8" | "SQfp16"
    pq     := "PQ" m ["x" nbits]                            (m divides the dimension)
    hnsw   := "HNSW" M ["," ("Flat" | "SQ8") | "_PQ" m]
    ivf    := "IVF" nlist "," ("Flat" | sq | pq)

with ``4 <= M <= 128``, ``1 <= nlist <= 65536``, ``4 <= nbits <= 12``. The normalised form
(what is stored and shown) has no spaces.
"""

from __future__ import annotations

import re

from index.errors import InvalidIndexSpec

DEFAULT_SPEC = "Flat"
MAX_SPEC_CHARS = 200
HNSW_M = (4, 128)
IVF_NLIST = (1, 65536)
PQ_NBITS = (4, 12)
SQ_TYPES = ("SQ4", "SQ6", "SQ8", "SQfp16")

_PRE = re.compile(r"^(?:(PCAR?)(\d+)|OPQ(\d+)(?:_(\d+))?)$")
_PQ = re.compile(r"^PQ(\d+)(?:x(\d+))?$")
_HNSW = re.compile(r"^HNSW(\d+)(?:_PQ(\d+))?$")
_IVF = re.compile(r"^IVF(\d+)$")

GRAMMAR = (
    "supported index specs: Flat, SQ4/SQ6/SQ8/SQfp16, PQ<m>[x<nbits>], HNSW<M>[,Flat|,SQ8|_PQ<m>], "
    "IVF<nlist>,<Flat|SQ..|PQ..>, each optionally after PCA<n>, PCAR<n> or OPQ<m>[_<n>] and "
    f"a comma; {HNSW_M[0]} <= M <= {HNSW_M[1]}, {IVF_NLIST[0]} <= nlist <= {IVF_NLIST[1]}, "
    f"{PQ_NBITS[0]} <= nbits <= {PQ_NBITS[1]}, m divides the dimension"
)


def parse_spec(spec: str | None, d: int) -> str:
    """The normalised spec if it is in the grammar for vectors of dimension ``d``, else
    ``InvalidIndexSpec`` saying what is wrong and what is supported."""
    if spec is None:
        return DEFAULT_SPEC
    if len(spec) > MAX_SPEC_CHARS:
        raise InvalidIndexSpec(f"an index spec has at most {MAX_SPEC_CHARS} characters")
    text = "".join(spec.split())
    if not text:
        return DEFAULT_SPEC
    if not text.isascii():
        raise InvalidIndexSpec(f"index spec {text!r} is not plain ASCII; {GRAMMAR}")
    if "IDMap" in text:
        raise InvalidIndexSpec("leave IDMap out of the index spec: ids are always mapped")
    parts = text.split(",")
    try:
        d_body = d
        if _PRE.match(parts[0]):
            d_body = _check_pre(parts[0], d)
            parts = parts[1:]
        _check_body(parts, d_body)
    except InvalidIndexSpec as exc:
        raise InvalidIndexSpec(f"index spec {text!r}: {exc}; {GRAMMAR}") from None
    return text


def _number(text: str, what: str, low: int, high: int) -> int:
    # Digits only (the regexes see to that), but a 10,000-digit number is still refused
    # before int() spends time on it.
    if len(text) > 9 or not low <= int(text) <= high:
        raise InvalidIndexSpec(f"{what} must be between {low} and {high}, got {text[:12]}")
    return int(text)


def _check_pre(part: str, d: int) -> int:
    """The output dimension of a pre-transform."""
    m = _PRE.match(part)
    assert m is not None
    if m.group(1):  # PCA / PCAR
        return _number(m.group(2), "the PCA output dimension", 1, d)
    subq = _number(m.group(3), "the OPQ sub-quantizer count", 1, d)
    out = _number(m.group(4), "the OPQ output dimension", 1, d) if m.group(4) else d
    if out % subq:
        raise InvalidIndexSpec(f"OPQ{subq} needs an output dimension divisible by {subq}")
    return out


def _check_pq(part: str, d: int) -> bool:
    m = _PQ.match(part)
    if m is None:
        return False
    subq = _number(m.group(1), "the PQ sub-quantizer count", 1, d)
    if d % subq:
        raise InvalidIndexSpec(f"PQ{subq} needs a dimension divisible by {subq}, got {d}")
    if m.group(2):
        _number(m.group(2), "PQ nbits", *PQ_NBITS)
    return True


def _check_leaf(part: str, d: int) -> bool:
    return part == "Flat" or part in SQ_TYPES or _check_pq(part, d)


def _check_body(parts: list[str], d: int) -> None:
    if not parts or not parts[0]:
        raise InvalidIndexSpec("nothing after the pre-transform")
    head, rest = parts[0], parts[1:]
    hnsw = _HNSW.match(head)
    ivf = _IVF.match(head)
    if hnsw:
        _number(hnsw.group(1), "HNSW M", *HNSW_M)
        if hnsw.group(2):
            _check_pq("PQ" + hnsw.group(2), d)
            ok = not rest
        else:
            ok = rest in ([], ["Flat"], ["SQ8"])
    elif ivf:
        _number(ivf.group(1), "IVF nlist", *IVF_NLIST)
        ok = len(rest) == 1 and _check_leaf(rest[0], d)
    else:
        ok = not rest and _check_leaf(head, d)
    if not ok:
        raise InvalidIndexSpec("not a supported index family")
