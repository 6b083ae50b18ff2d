"""A moto server on loopback for tests that talk to "AWS" over real HTTP.

Why a server and not ``mock_aws``: the code under test (and any subprocess it starts,
e.g. spark-submit) builds its own boto3 clients; ``AWS_ENDPOINT_URL`` reaches all of them,
an in-process patch does not.

Usage::

    from tests.aws_server import moto_endpoint  # noqa: F401  (pytest fixture)

    def test_x(moto_endpoint): ...

or ``with moto_server() as endpoint: ...`` outside pytest.

Facts worth knowing (see /work/shared/notes/emr-step-launcher-emulation.md):
- every ThreadedMotoServer in one process shares moto's global backends, so use unique
  resource names per test rather than relying on a fresh server;
- on a loopback endpoint moto's EMR API serves its us-east-1 backend whatever region the
  client signs with; CloudFormation, S3 and IAM honour the signing region.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-fake-key-id-FRUITS",
    "AWS_SECRET_ACCESS_KEY": "testing-fake-secret-FRUITS",
    "AWS_SESSION_TOKEN": "testing-fake-session-FRUITS",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}
# A profile named in the environment would be looked up in /dev/null and fail.
_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE")


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto on 127.0.0.1, point every boto3 client at it, restore the env after."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # 0: the OS picks a free port
    werkzeug_log = logging.getLogger("werkzeug")  # one access-log line per request otherwise
    saved_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {**FAKE_ENV, "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in (*env, *_UNSET)}
    os.environ.update(env)
    for k in _UNSET:
        os.environ.pop(k, None)
    try:
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
        werkzeug_log.setLevel(saved_level)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Session-wide moto endpoint URL (one server per importing test module, see pytest docs)."""
    with moto_server() as endpoint:
        yield endpoint


def regional_client(service: str, region: str = "eu-west-1"):
    """A boto3 client that reaches the running moto server under the real regional hostname.

    Why: moto's EMR picks its regional backend from the request's hostname, so a plain loopback
    endpoint always lands in us-east-1, while CloudFormation (signing region) creates clusters in
    eu-west-1. Using moto as a plain-HTTP proxy keeps the request on 127.0.0.1 (no DNS, no network)
    but carries the hostname `elasticmapreduce.eu-west-1.amazonaws.com`, as real AWS would see it.
    """
    import boto3
    from botocore.config import Config

    proxy = os.environ["AWS_ENDPOINT_URL"]
    prefix = boto3.client(service, region_name=region).meta.service_model.endpoint_prefix
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=f"http://{prefix}.{region}.amazonaws.com",
        config=Config(proxies={"http": proxy}),
    )
