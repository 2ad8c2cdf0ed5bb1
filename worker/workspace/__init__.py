"""The clinician workspace: server-rendered pages under ``/ui/`` of the HTTP API process.

``web`` builds the ASGI app (sign-in, sessions, CSRF, role checks, templates); the page
groups are ``pages_auth`` (sign-in, password), ``pages_jobs`` (worklist, job page, review,
diagnosis), ``pages_site`` (site page, models page); the data behind them is in
``worklist``, ``job_detail``, ``site_summary`` and ``models_summary``; people and their traces in
``users``, ``browser_sessions``, ``throttle`` and ``audit``; ``cli`` holds ``users`` and ``audit list``.
"""
