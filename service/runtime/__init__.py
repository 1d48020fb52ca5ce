"""The controller runtime: informers, work queue, controllers, leader election, sidecar, manager.

Generic machinery in the manner of client-go and controller-runtime; it knows nothing of kpack or Korifi.
"""
