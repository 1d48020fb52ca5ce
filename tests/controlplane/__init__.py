"""The real Kubernetes control plane for the tests (issue 13): kube-apiserver, kube-controller-manager and
etcd, built from their published Go modules (``go.mod`` + ``go.sum`` here; ``build.py`` builds them once
per machine into a cache outside the repository) and started by ``cluster.py`` on 127.0.0.1.

``python -m tests.controlplane build`` builds what is missing; ``python -m tests.controlplane run
--kubeconfig-out realcluster.kubeconfig`` (``make realcluster``) starts one in the foreground.
docs/testing.md, "The real control plane", says more.
"""
