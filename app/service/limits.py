"""One home for the limits a single request is held to: how many texts, files and
searches, how long a text, how deep a page. The HTTP routes, the search path and the
jobs ask here, so a limit is written once and every door enforces the same one."""

from __future__ import annotations

from collections.abc import Sequence

from app.service.config import Settings
from app.service.errors import Invalid, TooLarge

MAX_BATCH_QUERIES = 64  # searches in one search/batch request (413 beyond)


class Limits:
    def __init__(self, settings: Settings) -> None:
        self.max_k = settings.max_k
        self.max_texts = settings.max_texts_per_request
        self.max_text_chars = settings.max_text_chars
        self.max_files = settings.max_files_per_request
        self.max_batch_queries = MAX_BATCH_QUERIES
        self.max_upload_bytes = settings.max_upload_bytes
        self.max_search_hits = settings.max_search_hits
        self.search_timeout_s = settings.search_timeout_s

    def check_page(self, k: int, offset: int = 0) -> None:
        if not 1 <= k <= self.max_k:
            raise Invalid(f"k must be between 1 and {self.max_k}, got {k}", "invalid_k")
        if offset < 0 or offset + k > self.max_k:
            raise Invalid(
                f"offset + k must be at most {self.max_k} (offset {offset}, k {k})", "invalid_k"
            )

    def text_error(self, text: str) -> str | None:
        """Why one text is refused (too long), or None: for a job's records, which fail
        one by one instead of refusing a request."""
        if len(text) > self.max_text_chars:
            return f"the text has {len(text)} characters; the limit is {self.max_text_chars}"
        return None

    def check_texts(self, texts: Sequence[str], ids: Sequence[str] | None = None) -> None:
        if len(texts) > self.max_texts:
            raise TooLarge(f"{len(texts)} texts in one request; the limit is {self.max_texts}")
        for i, text in enumerate(texts):
            if len(text) > self.max_text_chars:
                what = f"text of {ids[i]!r}" if ids else "a text"
                raise TooLarge(
                    f"{what} has {len(text)} characters; the limit is {self.max_text_chars}"
                )

    def check_files(self, n: int) -> None:
        if n > self.max_files:
            raise TooLarge(f"{n} files in one request; the limit is {self.max_files}")

    def check_batch(self, n: int) -> None:
        if n > self.max_batch_queries:
            raise TooLarge(f"{n} searches in one request; the limit is {self.max_batch_queries}")

    def check_search_hits(self, depths: Sequence[int]) -> None:
        """Searches of one request (each query's ``offset + k``, and what its filter and
        words read, ``search.cost``) within the hit budget."""
        total = sum(depths)
        if total > self.max_search_hits:
            raise TooLarge(
                f"the searches ask for {total} hits together (queries, filters and word "
                "matching, which count for the rows they read); the "
                f"limit per request is {self.max_search_hits}: ask for fewer queries or a "
                "smaller k",
                code="search_too_large",
            )
