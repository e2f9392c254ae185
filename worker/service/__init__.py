"""Services: one function per use case (scan, regenerate, refresh, deliver, import, operator
actions), called by the Celery tasks, the CLI and the demo with an explicit runtime."""
