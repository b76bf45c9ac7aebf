"""Tessera: vision-transformer backbones served on images of any size.

Layers, each knowing only the ones below it (checked by ``lint-imports``; see docs/architecture.md):
``errors``/``settings``/``testing`` → ``models`` → ``runtime``/``imaging`` → ``routing`` →
``slides``/``export`` → ``api``/``clients`` → ``serve`` (the only package that imports Ray) →
``bench`` → ``loadtest`` → ``cli``.
"""

__version__ = "0.1.0"
