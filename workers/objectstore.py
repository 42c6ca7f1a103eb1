"""S3 through boto3, for what pyarrow's filesystem cannot do: a conditional create, and a check of a
bucket that names what is wrong with it (missing, or the credentials refused) in one line.

The client is configured from the environment pyarrow's S3 filesystem reads, so both reach the same
endpoint with the same keys: `AWS_ENDPOINT_URL` (MinIO, moto), `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` (or a profile or role, by boto3's usual chain) and the
region from `AWS_REGION` or `AWS_DEFAULT_REGION`. URIs are `s3://bucket/key`.
"""

from __future__ import annotations

import functools
import os
from typing import Any

ENVIRONMENT = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
REFUSED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "403"}


def split(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` (or pyarrow's `bucket/some/key`) as (bucket, key)."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"{uri!r}: not an s3://bucket/key URI")
    return bucket, key


def client() -> Any:
    """A boto3 S3 client for the current environment (one per distinct environment, reused)."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return _client(region, tuple(os.environ.get(name) for name in ENVIRONMENT))


@functools.lru_cache(maxsize=4)
def _client(region: str | None, environment: tuple[str | None, ...]) -> Any:
    """`environment` is only the cache key: boto3 reads the variables itself."""
    import boto3

    return boto3.session.Session(region_name=region).client("s3")


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create the object holding `data` unless it exists; True if this call created it.

    One PUT with `If-None-Match: *`: S3 (and moto, MinIO) refuses it with 412 when the key
    exists, so exactly one of any number of racing writers wins. A 409 (another conditional
    write to the key in flight) is a loss too: that writer's PUT is the one that lands."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split(uri)
    try:
        client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as error:
        if error.response["ResponseMetadata"]["HTTPStatusCode"] in (409, 412):
            return False
        raise OSError(f"{uri}: {_reason(error)}") from None
    except BotoCoreError as error:  # no credentials, endpoint unreachable
        raise OSError(f"{uri}: {error}") from None
    return True


def bucket_problem(uri: str) -> str | None:
    """Why the URI's bucket cannot be used, in one line (it is missing, the credentials are
    refused, the endpoint is unreachable), or None. One LIST of at most one key, which reading a
    store needs to be allowed anyway."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split(uri)
    try:
        client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    except ClientError as error:
        code = error.response["Error"].get("Code")
        if code == "NoSuchBucket":
            return f"bucket {bucket!r} does not exist"
        if code in REFUSED:
            return f"the credentials were refused ({_reason(error)})"
        return _reason(error)
    except BotoCoreError as error:  # no credentials, endpoint unreachable
        return str(error)
    return None


def _reason(error: Any) -> str:
    """A botocore ClientError as `Code: message`, one line."""
    details = error.response["Error"]
    return f"{details.get('Code')}: {details.get('Message', '')}".splitlines()[0]
