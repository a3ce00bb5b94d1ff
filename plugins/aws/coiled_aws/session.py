"""boto3 clients for one region, made lazily, with retries and backoff on throttling."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from coiled_core.errors import CoiledError

from coiled_aws.options import AWSOptions

DEFAULT_REGION = "us-east-1"


class AWS:
    """The AWS services one cluster uses, in its region (and at ``endpoint_url`` if given)."""

    def __init__(self, options: AWSOptions):
        import boto3

        self.options = options
        self.session = boto3.session.Session()
        self.region: str = options.region or self.session.region_name or DEFAULT_REGION
        self._clients: dict[str, Any] = {}

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
