"""The web console at ``/console``: server-rendered pages over the services.

A layer beside ``app.api``: each page calls the same service functions the
``/v1`` routes call (no SQL here, no second source of truth). ``app.main``
mounts :func:`app.console.app.build_console` on the API's application.
"""
