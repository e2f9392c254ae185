"""Every SQL statement of the service: one module per table or concern. Never commits;
:func:`worker.store.db.session_scope` is the unit of work."""
