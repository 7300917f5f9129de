"""Thumbnails: downscaled, cached on disk, revalidated by ETag, never the original."""

from __future__ import annotations

import hashlib
import io

import httpx
import numpy as np
from PIL import Image

from tests.helpers import AppServer


def photo(width: int, height: int) -> bytes:
    """A smooth, photo-like JPEG: small enough for the test server's upload limit."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def test_thumbnails_are_small_cached_and_revalidated(
    client: httpx.Client, collection: str, server: AppServer
) -> None:
    big = photo(1200, 800)
    buf = io.BytesIO()
    Image.new("RGBA", (100, 60), (0, 0, 0, 0)).save(buf, "PNG")  # black, fully transparent
    rgba = buf.getvalue()
    r = client.post(
        f"/v1/collections/{collection}/images",
        files=[("files", ("big.png", big)), ("files", ("alpha.png", rgba))],
        data={"ids": ["big", "dir/alpha"]},
    )
    assert r.status_code == 200, r.text
    client.post(f"/v1/collections/{collection}/texts", json={"items": [{"id": "t", "text": "x"}]})
    base = f"/v1/collections/{collection}/items"

    r = client.get(f"{base}/big/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(r.content))
    assert thumb.format == "JPEG" and thumb.size == (256, 171)  # aspect kept, longer side 256
    assert len(r.content) < len(big) / 10
    etag = r.headers["etag"]
    digest = hashlib.sha256(big).hexdigest()
    cached = list((server.data_dir / "thumbnails" / "256").rglob(f"{digest}.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == r.content
    before = cached[0].stat().st_mtime_ns
    # Served again from the cache, and not at all when the client has it.
    assert client.get(f"{base}/big/thumbnail").content == r.content
    assert cached[0].stat().st_mtime_ns == before
    again = client.get(f"{base}/big/thumbnail", headers={"If-None-Match": etag})
    assert again.status_code == 304 and not again.content

    small = client.get(f"{base}/big/thumbnail", params={"size": 64})
    assert Image.open(io.BytesIO(small.content)).size == (64, 43)
    assert small.headers["etag"] != etag
    # Never enlarged; transparency flattened onto white; ids with '/' work.
    r = client.get(f"{base}/dir/alpha/thumbnail", params={"size": 512})
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (100, 60) and img.mode == "RGB"
    assert min(img.getpixel((50, 30))) > 240  # type: ignore[arg-type]

    bad = client.get(f"{base}/big/thumbnail", params={"size": 100})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_size"
    assert client.get(f"{base}/t/thumbnail").status_code == 404
    assert client.get(f"{base}/missing/thumbnail").status_code == 404
