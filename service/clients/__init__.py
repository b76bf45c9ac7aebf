"""HTTP clients of a running Tessera (what ``tessera slide --server`` uses).

Clients know the protocol's shapes (options, result files, the error envelope), not the server's
internals: nothing here imports the API, the serving core or Ray.
"""

from service.clients.slides import RESULT_ROUTES, ServerUnavailable, SlideClient

__all__ = ["RESULT_ROUTES", "ServerUnavailable", "SlideClient"]
