"""The quickstart on the k8s backend, against the offline Kubernetes (no cluster needed).

A local HTTPS fake of the Kubernetes API, with a kubelet that runs each pod's containers as local
processes (each pod on its own loopback address) and a small kube-proxy for Services. The backend
makes only real ``kubernetes`` client calls, and the Dask cluster is real. Run it with
`make demo-k8s`; on a real cluster, drop the OfflineKubernetes part and keep the two settings
(``coiled.backend`` and, if you like, ``backend_options={"namespace": ...}``).
"""

import os
import tempfile

import dask.config
from coiled_k8s.offline import OfflineKubernetes

from coiled_core.testing.standin import standin_proof


def main() -> None:
    # The offline switches are honoured only while a stand-in proves it runs.
    with standin_proof() as proof, OfflineKubernetes(tempfile.mkdtemp(prefix="offline-k8s-")) as kubernetes:
        os.environ.update(proof.environ())
        settings = {
            "coiled.backend": "k8s",
            "coiled.loopback-addresses": True,  # the fake's pod and Service addresses live on loopback
            "coiled.backend-options": {"k8s": {"kubeconfig": kubernetes.kubeconfig}},
        }
        with dask.config.set(settings):
            import quickstart

            quickstart.main()


if __name__ == "__main__":
    main()
