"""``reauth serve``: the reconnect pages people open from a notification (an ASGI app)."""
