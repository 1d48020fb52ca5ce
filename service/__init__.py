"""kpack-image-builder: Korifi's kpack image builder as an asynchronous Python controller."""

__version__ = "0.1.0"
