"""What clip-retrieval's ``clip back`` API asks of the service, decided here: which
collections a key sees as indices, which one answers when none is named, and how a hit is
described (its metadata, caption, URL and thumbnail) for ``ClipClient`` and clip-front.
The route (``app.api.routes.clip_compat``) only parses clip back's requests and formats
its answers."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from app.service.access import Grant, opens
from app.service.errors import Invalid
from app.service.thumbnails import ThumbnailCache
from index import CollectionStore, Hit, Item, StoreError
from models.errors import ModelError

THUMBNAIL = 512  # the longer side of the base64 JPEG a described hit carries


def serving_collections(store: CollectionStore | None, grant: Grant | None) -> list[str]:
    """The collections that can serve and that ``grant`` opens, as clip back's indices."""
    if store is None:
        return []
    return [c.name for c in store.list_collections() if c.error is None and opens(grant, c.name)]


def default_collection(store: CollectionStore, grant: Grant | None) -> str:
    """The first collection ``grant`` may search (clip-front opened without ``index=``
    names none)."""
    serving = serving_collections(store, grant)
    if not serving:
        raise Invalid("there is no collection to search", code="invalid_query")
    return serving[0]


class Describer:
    """Hits as clip back's metadata rows; ``base`` is this server's URL (with its final
    slash), for the URLs of stored images."""

    def __init__(self, store: CollectionStore, thumbnails: ThumbnailCache, base: str) -> None:
        self.store = store
        self.thumbnails = thumbnails
        self.base = base

    def hits(self, name: str, hits: Sequence[Hit]) -> list[dict[str, Any]]:
        items = self.store.items_by_label(name, [h.label for h in hits])
        return [self.item(name, items[h.label]) if h.label in items else {} for h in hits]

    def labels(self, name: str, labels: Sequence[int]) -> list[dict[str, Any]]:
        """``{"id", "metadata"}`` per row label; ``{}`` for one no longer stored."""
        items = self.store.items_by_label(name, list(labels))
        return [
            {"id": i, "metadata": self.item(name, items[i]) if i in items else {}} for i in labels
        ]

    def item(self, name: str, item: Item) -> dict[str, Any]:
        """An item's own metadata, then caption, url and image; what there is none of is
        left out, as clip back leaves out a column it lacks (clip-front reads the length
        of any caption it is given)."""
        meta = item.metadata
        caption = item.text if item.text is not None else meta.get("caption")
        out: dict[str, Any] = {**meta, "xmodal_id": item.id, "caption": caption}
        url = meta.get("url")
        if item.content_sha256 is not None:
            jpeg = self._thumbnail(name, item.id, item.content_sha256)
            if jpeg is not None:
                out["image"] = base64.b64encode(jpeg).decode()
            if url is None:
                url = f"{self.base}v1/collections/{quote(name)}/items/{quote(item.id)}/image"
        if url is None and item.text is not None:
            url = caption_svg(item.id, item.text)
        out["url"] = url
        return {k: v for k, v in out.items() if v is not None}

    def _thumbnail(self, name: str, item_id: str, digest: str) -> bytes | None:
        def original() -> bytes:
            return self.store.get_item_content(name, item_id)[0]

        try:
            return self.thumbnails.get(digest, THUMBNAIL, original)
        except (StoreError, ModelError):  # deleted meanwhile, or its file unreadable
            return None


def caption_svg(item_id: str, text: str) -> str:
    """A small picture of a text item's caption, as a data URL: clip-front draws each hit
    from its url, hides those whose image fails and folds equal urls into one, so every
    text hit gets its own (the id is in it)."""
    shown = text if len(text) <= 140 else text[:139] + "\u2026"
    lines = [shown[i : i + 28] for i in range(0, len(shown), 28)][:5]
    rows = "".join(
        f'<text x="8" y="{28 + 22 * n}">{html.escape(line)}</text>' for n, line in enumerate(lines)
    )
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="256" height="144" '
        'font-family="sans-serif" font-size="16">'
        f"<title>{html.escape(item_id)}</title>"
        f'<rect width="256" height="144" fill="#f4f1ea"/>{rows}</svg>'
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
