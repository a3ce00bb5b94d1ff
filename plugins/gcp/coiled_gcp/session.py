"""One project's clients: Compute Engine (google-cloud-compute, REST), and Cloud Storage and
Secret Manager (their JSON APIs over an authorised HTTP session).

The SDK is imported on first use only: ``import coiled_gcp`` costs nothing. ``COILED_GCP_ENDPOINT``
(set by :class:`coiled_gcp.offline.OfflineGCP`) points every client at one local endpoint, with
``COILED_GCP_TOKEN`` as a bearer token instead of google.auth's credentials.

Operations are waited for here, through the configured endpoint: an ``ExtendedOperation``'s
``result()`` would poll the default endpoint with a client of its own.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Any

from coiled_core.backend import ClusterSpecError, CoiledError, ProvisionError, require_standin
from coiled_gcp.options import GCPOptions

CREDENTIALS_HELP = (
    "no Google Cloud credentials found: run `gcloud auth application-default login`, or set "
    "GOOGLE_APPLICATION_CREDENTIALS to a service account key file"
)


class OperationError(ProvisionError):
    """An operation ended with an error; ``codes`` lists its error codes (``QUOTA_EXCEEDED``...)."""

    def __init__(self, message: str, codes: list[str], status: int | None):
        super().__init__(message)
        self.codes, self.status = codes, status


class GCP:
    """The clients of one project and region (see the module)."""

    def __init__(self, options: GCPOptions):
        self.options = options
        self.region = options.region
        self.endpoint = os.environ.get("COILED_GCP_ENDPOINT") or None
        if self.endpoint:
            # The offline stand-in's switch: anywhere else it would send this client's requests
            # (and COILED_GCP_TOKEN) to whatever the variable names.
            require_standin("COILED_GCP_ENDPOINT")
        self._credentials: Any = None
        self._project = options.project or os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT")

    # -- credentials and project -------------------------------------------------------------
    def _resolve(self) -> None:
        if self._credentials is not None:
            return
        if self.endpoint:
            from google.auth.credentials import AnonymousCredentials

            self._credentials = AnonymousCredentials()
            return
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            self._credentials, project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        except DefaultCredentialsError:
            raise CoiledError(CREDENTIALS_HELP) from None
        self._project = self._project or project

    @property
    def project(self) -> str:
        self._resolve()
        if not self._project:
            raise ClusterSpecError(
                "backend_options.project: no project given and none found (GOOGLE_CLOUD_PROJECT, or the default "
                "credentials' project); give backend_options={'project': 'my-project'}"
            )
        return self._project

    @property
    def credentials(self) -> Any:
        self._resolve()
        return self._credentials

    def access_token(self) -> str:
        """A current access token of the client's credentials (offline: the fake's token)."""
        if self.endpoint:
            return os.environ.get("COILED_GCP_TOKEN", "")
        from google.auth.transport.requests import Request

        self.credentials.refresh(Request())
        return self.credentials.token

    # -- Compute Engine ----------------------------------------------------------------------
    def _compute(self, name: str) -> Any:
        from google.api_core.client_options import ClientOptions
        from google.cloud import compute_v1

        options = ClientOptions(api_endpoint=self.endpoint) if self.endpoint else None
        client = getattr(compute_v1, name)(credentials=self.credentials, client_options=options, transport="rest")
        if self.endpoint:
            # The fake wants its token; anonymous credentials send none.
            session = client._transport._session
            session.headers["Authorization"] = f"Bearer {os.environ.get('COILED_GCP_TOKEN', '')}"
        return client

    @cached_property
    def instances(self) -> Any:
        return self._compute("InstancesClient")

    @cached_property
    def firewalls(self) -> Any:
        return self._compute("FirewallsClient")

    @cached_property
    def addresses(self) -> Any:
        return self._compute("AddressesClient")

    @cached_property
    def networks(self) -> Any:
        return self._compute("NetworksClient")

    @cached_property
    def subnetworks(self) -> Any:
        return self._compute("SubnetworksClient")

    @cached_property
    def machine_types(self) -> Any:
        return self._compute("MachineTypesClient")

    @cached_property
    def regions(self) -> Any:
        return self._compute("RegionsClient")

    @cached_property
    def zone_operations(self) -> Any:
        return self._compute("ZoneOperationsClient")

    @cached_property
    def region_operations(self) -> Any:
        return self._compute("RegionOperationsClient")

    @cached_property
    def global_operations(self) -> Any:
        return self._compute("GlobalOperationsClient")

    def zones(self) -> list[str]:
        """The zones of the region, in the API's order (``zone`` alone when given)."""
        if self.options.zone:
            return [self.options.zone]
        region = self.regions.get(project=self.project, region=self.region)
        return sorted(z.rsplit("/", 1)[-1] for z in region.zones)

    def wait(self, operation: Any, timeout: float = 300) -> None:
        """Wait for ``operation`` (a ``compute_v1.Operation``) through this endpoint; raise
        :class:`OperationError` if it ended with an error (also a DONE one, as the API reports
        zone exhaustion and quota)."""
        from google.cloud import compute_v1

        deadline = time.monotonic() + timeout
        while operation.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() > deadline:
                raise ProvisionError(f"operation {operation.name} did not finish within {timeout:g}s")
            if operation.zone:
                operation = self.zone_operations.wait(project=self.project, zone=operation.zone.rsplit("/", 1)[-1], operation=operation.name)
            elif operation.region:
                operation = self.region_operations.wait(project=self.project, region=operation.region.rsplit("/", 1)[-1], operation=operation.name)
            else:
                operation = self.global_operations.wait(project=self.project, operation=operation.name)
        if operation.error and operation.error.errors:
            codes = [e.code for e in operation.error.errors]
            text = "; ".join(f"{e.code}: {e.message}" for e in operation.error.errors)
            raise OperationError(text, codes, operation.http_error_status_code or None)

    # -- Cloud Storage and Secret Manager (JSON APIs) ----------------------------------------
    @cached_property
    def http(self) -> Any:
        """An HTTP session that authorises each request (google.auth), or carries the fake's token."""
        if self.endpoint:
            import requests

            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {os.environ.get('COILED_GCP_TOKEN', '')}"
            return session
        from google.auth.transport.requests import AuthorizedSession

        return AuthorizedSession(self.credentials)

    def storage_url(self, path: str, upload: bool = False) -> str:
        base = self.endpoint or "https://storage.googleapis.com"
        return f"{base}/{'upload/' if upload else ''}storage/v1/{path}"

    def secrets_url(self, path: str) -> str:
        base = self.endpoint or "https://secretmanager.googleapis.com"
        return f"{base}/v1/projects/{self.project}/{path}"


def in_parallel(call: Callable[[Any], object], items: Iterable[Any], parallel: int = 16) -> None:
    """``call(item)`` for every item, ``parallel`` at a time; the first error is raised once all
    have stopped (no new item starts after an error).

    Plain threads, not an executor: teardown also runs at interpreter exit (a creator's
    ``Cluster`` shutting down), when executors refuse new work.
    """
    pending = list(items)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not pending or errors:
                    return
                item = pending.pop()
            try:
                call(item)
            except BaseException as e:
                with lock:
                    errors.append(e)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(min(parallel, len(pending)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
