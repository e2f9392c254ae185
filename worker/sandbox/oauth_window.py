"""The sandbox's OAuth window: what a person sees after opening an ``oauth_window_uri``.

MX's real window is the bank's sign-in; the sandbox shows **Authorize** and **Cancel** and then
ends the flow the way MX documents it:

* BROWSER (``referral_source=BROWSER``): an "OAuth complete" page posts
  ``{"type": "oauthComplete/success" | "oauthComplete/error", "metadata": {...}}`` to
  ``window.opener`` and closes itself (a tab with no opener just says it is done);
* APP: a redirect to ``client_redirect_url`` with ``member_guid``, ``status`` (``success`` or
  ``error``) and ``error_reason`` (the React Native SDK's shape; MX does not document the error
  parameter's name).

Authorize also makes the member read as ``CONNECTED`` from the member endpoints, so a
confirmation read after the flow sees what MX would show.
"""

from __future__ import annotations

import json
from html import escape
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:3rem auto;max-width:26rem;text-align:center}"
    "button{font-size:1rem;padding:.6rem 1.4rem;margin:.4rem;border-radius:6px;border:1px solid"
    " #888;cursor:pointer}.go{background:#137333;color:#fff;border-color:#137333}"
)


def window(member_guid: str, action: str) -> HTMLResponse:
    """The sign-in stand-in: two buttons posting the person's decision."""
    body = (
        f"<h1>MX sandbox bank</h1><p>Allow access to your accounts for member "
        f"<code>{escape(member_guid)}</code>?</p>"
        f'<form method="post" action="{escape(action)}">'
        '<button class="go" name="decision" value="authorize">Authorize</button>'
        '<button name="decision" value="cancel">Cancel</button></form>'
    )
    return _page("MX sandbox: authorize", body)


def _page(title: str, body: str, script: str = "") -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}"
        f"</title><style>{_STYLE}</style></head><body>{body}"
        f"{'<script>' + script + '</script>' if script else ''}</body></html>"
    )


def finish(
    *, member_guid: str, authorized: bool, referral_source: str, redirect_url: str | None
) -> Response:
    """End the flow like MX: postMessage to the opener (BROWSER) or redirect (APP)."""
    status = "success" if authorized else "error"
    reason = None if authorized else "CANCELLED"
    if referral_source == "APP" and redirect_url:
        query = {"member_guid": member_guid, "status": status}
        if reason:
            query["error_reason"] = reason
        separator = "&" if "?" in redirect_url else "?"
        return RedirectResponse(f"{redirect_url}{separator}{urlencode(query)}", status_code=303)
    metadata = {"member_guid": member_guid}
    if reason:
        metadata["error_reason"] = reason
    message = {"type": f"oauthComplete/{status}", "metadata": metadata}
    script = (
        f"var m={json.dumps(message)};"
        "if(window.opener){window.opener.postMessage(m,'*');"
        "setTimeout(function(){window.close()},300);}"
    )
    text = "You're connected. You can close this window." if authorized else "Cancelled."
    return _page("MX sandbox: done", f"<h1>OAuth complete</h1><p>{text}</p>", script)


async def decision(request: Request) -> tuple[bool, str, str | None]:
    """(authorized, referral_source, client_redirect_url) from the window's form post."""
    # Parsed by hand: Starlette's form parser needs python-multipart, which nothing else needs.
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    q = request.query_params
    return (
        form.get("decision", [""])[0] == "authorize",
        q.get("referral_source", "BROWSER"),
        q.get("client_redirect_url"),
    )
