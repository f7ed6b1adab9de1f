"""The tree page: the HTML, JavaScript and CSS the exporter serves at ``/`` and ``/ui/``.

Everything the page needs ships in this package (no CDN, no build step), so it
works on air-gapped hosts. The page itself is static; it reads the JSON API
(``/api/v1/roots``, ``/api/v1/roots/{name}``, ``/api/v1/ancestors``) and follows the
selected root's ``/api/v1/events`` stream from the document's ``seq``, polling the
document once a second only when the stream is unavailable.
"""

from __future__ import annotations

import functools
from importlib import resources
from string import Template

# served under /ui/NAME; anything else there is a 404
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


@functools.cache
def _read(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


def asset(name: str) -> tuple[bytes, str] | None:
    """The body and Content-Type of ``/ui/<name>``, or None if there is no such asset."""
    ctype = ASSETS.get(name)
    if ctype is None:
        return None
    return _read(name), ctype


def index_page(version_html: str, roots_html: str) -> str:
    """The page at ``/``: the live tree page, with the version and the roots table
    (already HTML-escaped) rendered in, so it says something even without scripts."""
    template = Template(_read("index.html").decode())
    return template.substitute(version=version_html, roots=roots_html)


__all__ = ["ASSETS", "asset", "index_page"]
