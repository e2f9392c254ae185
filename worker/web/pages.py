"""The HTML of the reconnect pages: small, accessible, no external resources.

Every value is escaped; scripts and styles carry the response's CSP nonce. The pages work
without JavaScript (a form POST answered 303 to MX); with it, the page follows MX's browser flow
(a popup, then MX's ``oauthComplete`` postMessage from an allowed origin).
"""

from __future__ import annotations

import json
from html import escape

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f5f6f8;
color:#1b1f24}
main{max-width:32rem;margin:4rem auto;padding:2rem;background:#fff;border-radius:12px;
box-shadow:0 1px 4px rgba(0,0,0,.08)}
h1{font-size:1.4rem;margin:0 0 1rem}
p{line-height:1.5}
button{font-size:1.05rem;padding:.75rem 1.5rem;border:0;border-radius:8px;background:#1a56db;
color:#fff;cursor:pointer}
button:focus{outline:3px solid #93b4f5;outline-offset:2px}
.status{margin-top:1rem;min-height:1.5em}
"""


def _page(title: str, body: str, nonce: str, script: str = "") -> str:
    script_tag = f'<script nonce="{nonce}">{script}</script>' if script else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f'<title>{escape(title)}</title><style nonce="{nonce}">{STYLE}</style></head>'
        f"<body><main>{body}</main>{script_tag}</body></html>"
    )


RECONNECT_JS = """
(function(){
  const form = document.getElementById('reconnect');
  const status = document.getElementById('status');
  const cfg = JSON.parse(document.getElementById('cfg').textContent);
  form.addEventListener('submit', async function (ev) {
    const popup = window.open('', 'mx_oauth', 'popup,width=520,height=720');
    if (!popup) { return; }            // popups blocked: the plain form POST (303) takes over
    ev.preventDefault();
    status.textContent = 'Opening your bank\\u2026';
    let answer;
    try {
      const r = await fetch(form.action, {method: 'POST', headers: {'Accept': 'application/json'},
                                          credentials: 'same-origin'});
      answer = await r.json();
      if (!r.ok || !answer.uri) { throw new Error(answer.message || 'failed'); }
    } catch (e) {
      popup.close();
      status.textContent = (answer && answer.message) || 'Something went wrong. Please try again.';
      return;
    }
    popup.location.href = answer.uri;
    status.textContent = 'Finish signing in with your bank in the window that opened.';
    window.addEventListener('message', async function onMessage(event) {
      if (event.source !== popup || cfg.origins.indexOf(event.origin) < 0) { return; }
      const data = typeof event.data === 'string' ? {type: event.data} : (event.data || {});
      const type = String(data.type || '');
      if (!/oauthComplete\\/(success|error)$/.test(type)) { return; }
      window.removeEventListener('message', onMessage);
      const meta = data.metadata || {};
      const body = {click: answer.click, status: type.endsWith('success') ? 'success' : 'error',
                    error_reason: meta.error_reason || null, member_guid: meta.member_guid || null};
      status.textContent = 'Checking with your bank\\u2026';
      try {
        const r = await fetch(cfg.report, {method: 'POST', credentials: 'same-origin',
          headers: {'Content-Type': 'application/json', 'Accept': 'application/json'},
          body: JSON.stringify(body)});
        const outcome = await r.json();
        status.textContent = outcome.message;
        if (outcome.done) { form.hidden = true; }
      } catch (e) {
        status.textContent = 'We could not confirm it yet. If you finished, you are all set.';
      }
    });
  });
})();
"""


def reconnect(*, institution: str, why: str, action: str, report: str, origins: list[str],
              nonce: str) -> str:  # fmt: skip
    cfg = json.dumps({"origins": origins, "report": report}).replace("<", "\\u003c")
    body = (
        f"<h1>Reconnect {escape(institution)}</h1>"
        f"<p>{escape(why)} To keep your accounts up to date, sign in with your bank again.</p>"
        f'<form id="reconnect" method="post" action="{escape(action)}">'
        '<button type="submit">Reconnect</button></form>'
        '<p id="status" class="status" role="status" aria-live="polite"></p>'
        f'<script type="application/json" id="cfg" nonce="{nonce}">{cfg}</script>'
    )
    return _page(f"Reconnect {institution}", body, nonce, RECONNECT_JS)


def message(title: str, text: str, nonce: str) -> str:
    """A page that only says something (done, expired, not found, too many tries)."""
    return _page(title, f"<h1>{escape(title)}</h1><p>{escape(text)}</p>", nonce)
