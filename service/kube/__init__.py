"""The Kubernetes API layer: resource descriptors, errors, selectors, configuration and the HTTP client.

Nothing here knows about kpack or Korifi beyond the resource table in ``resources``.
"""
