"""The simulated cluster: a Kubernetes API emulator (and, later, a kpack simulator) for tests and the demo.

It behaves as kube-apiserver (and the parts of kube-controller-manager a controller relies on: garbage
collection and namespace deletion) does, so that code proven against it holds on a real cluster.
"""
