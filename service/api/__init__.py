"""Transports over the serving core: protocol models, REST routes, gRPC servicers, the one error mapping.

Knows nothing of Ray: ``service/serve/`` hosts these on Ray Serve. (This file makes ``service.api``
a regular package: as a namespace package it was left out of the import graph that
``lint-imports`` checks, and out of the built wheel.)
"""
