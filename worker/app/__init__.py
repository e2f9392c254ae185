"""The Celery application, its tasks and the follow-up strategies (Celery or inline)."""
