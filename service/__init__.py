"""Tessera: vision-transformer backbones served on images of any size.

Layers (each knows only the ones below it): ``models`` → ``export`` → ``runtime``;
``imaging``, ``routing``, ``slides``; ``api`` (transport-free serving core and protocol);
``serve`` (the only package that imports Ray); ``cli``. See docs/architecture.md.
"""

__version__ = "0.1.0"
