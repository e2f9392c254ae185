"""``celery -A worker.celery_app`` entry point: the app lives in :mod:`worker.app.celery_app`."""

from worker.app.celery_app import app

__all__ = ["app"]
