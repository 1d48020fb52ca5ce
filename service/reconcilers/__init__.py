"""The domain: Korifi's BuildWorkload, BuilderInfo and kpack Build reconcilers, on top of the generic
runtime. Nothing here speaks HTTP; reads come from informer caches and writes go through the client."""
