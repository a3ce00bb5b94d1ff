"""The Kubernetes backend of coiled-core (``backend="k8s"``). Kept empty: the node add-on
(``coiled_k8s.node``) is shipped to pods through this package, where only the standard library is."""
