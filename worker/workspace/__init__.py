"""The clinician workspace: server-rendered pages under ``/ui/`` of the HTTP API process.

``application`` builds the ASGI app; ``web`` is what every page uses (the signed-in person,
CSRF and role checks, rendering); ``access_log`` keeps search terms out of the log. Page
groups: ``pages_auth`` (sign-in, password), ``pages_jobs`` (worklist, job page, review,
diagnosis), ``pages_site`` (site and models pages), ``pages_users`` (users, for admins).
The data behind them: ``worklist``, ``job_detail``, ``site_summary``, ``models_summary``,
``charts``. People and their traces: ``users``, ``browser_sessions``, ``throttle``,
``audit``. ``cli`` holds the ``users`` and ``audit list`` commands.
"""
