"""boto3 clients for one region, made lazily, with retries and backoff on throttling.

Every AWS call of the client side of the backend goes through an :class:`AWS`. Functions in
:data:`SESSION_HOOKS` see each boto3 session it makes before any client of it exists: the place to
register botocore event handlers, for example to audit or record the calls made (the tests check
the published client policy against every action a cluster's lifecycle calls this way).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cached_property
from typing import Any

from coiled_core.backend import CoiledError

from coiled_aws.options import AWSOptions

DEFAULT_REGION = "us-east-1"

#: Called with every new ``boto3.session.Session`` an :class:`AWS` makes; append to add one.
SESSION_HOOKS: list[Callable[[Any], None]] = []


_LOADER: Any = None
_LOADER_LOCK = threading.Lock()


def _boto3_session() -> Any:
    """A new boto3 session whose botocore session shares one data loader with every other: each
    session would otherwise read and parse the service models (EC2's is large) again for its
    first client. Credentials, region and configuration stay per session."""
    global _LOADER
    import boto3
    import botocore.loaders
    import botocore.session

    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = botocore.loaders.create_loader()
        core = botocore.session.get_session()
        core.register_component("data_loader", _LOADER)
        session = boto3.session.Session(botocore_session=core)
        # boto3 appends its own data directory to the loader's paths for every session.
        _LOADER.search_paths[:] = list(dict.fromkeys(_LOADER.search_paths))
    return session


class AWS:
    """The AWS services one cluster uses, in its region (and at ``endpoint_url`` if given)."""

    def __init__(self, options: AWSOptions):
        self.options = options
        self.session = _boto3_session()
        for hook in list(SESSION_HOOKS):
            hook(self.session)
        self.region: str = options.region or self.session.region_name or DEFAULT_REGION
        self._clients: dict[str, Any] = {}

    @property
    def partition(self) -> str:
        """The ARN partition of the region: 'aws', 'aws-cn', 'aws-us-gov', ..."""
        return self.session.get_partition_for_region(self.region)

    def client(self, service: str) -> Any:
        if service not in self._clients:
            from botocore.config import Config

            # Adaptive retry mode backs off on throttling (RequestLimitExceeded) by itself.
            config = Config(retries={"mode": "adaptive", "max_attempts": 10})
            self._clients[service] = self.session.client(
                service, region_name=self.region, endpoint_url=self.options.endpoint_url, config=config
            )
        return self._clients[service]

    @property
    def ec2(self) -> Any:
        return self.client("ec2")

    @cached_property
    def account_id(self) -> str:
        """The caller's account; also the check that credentials exist, before anything is made."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return self.client("sts").get_caller_identity()["Account"]
        except NoCredentialsError:
            raise CoiledError(
                "no AWS credentials found: configure them (aws configure, AWS_PROFILE, or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), or try the offline simulator "
                "(python -m coiled_aws.offline)"
            ) from None
        except (ClientError, BotoCoreError) as e:
            raise CoiledError(f"AWS credentials were refused ({self.region}): {e}") from e
