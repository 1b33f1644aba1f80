"""Pixel limits, in one place (no heavy imports: the command line uses them as option defaults).

``DEFAULT_MAX_PIXELS`` is the one default of the library and of every command that decodes images
(:class:`glassdetect.views.build.ViewSpec`, :class:`glassdetect.inference.api.Detector`, ``train``, ``predict``,
``tune``). The HTTP service takes uploads from anyone, so ``glassdetect serve`` has its own, smaller
*option default*, ``SERVE_MAX_PIXELS`` (a service setting; ``--max-pixels`` overrides it).

Our limits are checked per call, from the image header, before any pixel is decoded
(:func:`glassdetect.views.pilguard.identify`); Pillow's process-wide ``Image.MAX_IMAGE_PIXELS`` is left as the
host process set it.
"""
from __future__ import annotations

DEFAULT_MAX_PIXELS = 200_000_000  # width × height; larger images are refused with an ImageError
SERVE_MAX_PIXELS = 50_000_000  # the service's default for uploads (422 above)
