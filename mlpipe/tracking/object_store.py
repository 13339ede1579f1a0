"""An S3 artifact store, checked before the team's server relies on it: one line per fault.

MLflow's server starts and answers /health whatever its `--artifacts-destination` is; a wrong
secret, a missing bucket or a stopped store then shows only as HTTP 500 on each upload. So
`team serve` writes and deletes one probe object first, with the credentials and endpoint the
server will use (boto3's own lookup: the environment, AWS_PROFILE, ~/.aws/credentials; the
endpoint from MLFLOW_S3_ENDPOINT_URL, as MLflow reads it, else AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL, as boto3 reads them, else AWS itself).
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit

from mlpipe.errors import ConfigError, TrackingError, first_line, redact

S3_CHECK_TIMEOUT_S = 5  # a store that has not answered by then is down, for the check
ENDPOINT_ENV = "MLFLOW_S3_ENDPOINT_URL"
_CREDENTIALS = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or write ~/.aws/credentials"
)
_WRONG_KEY = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken"}
_DENIED = {"AccessDenied", "AllAccessDisabled", "403"}
_NO_BUCKET = {"NoSuchBucket", "404"}


def split_s3_uri(uri: str) -> tuple[str, str]:
    """The bucket and key prefix of `s3://bucket/prefix`, or ConfigError naming what is wrong."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc or "@" in parts.netloc:
        raise ConfigError(f"{redact(uri)}: not an S3 location; write s3://bucket/path")
    return parts.netloc, parts.path.strip("/")


def check_s3_writable(uri: str, option: str = "--artifacts-destination") -> None:
    """Write and delete a probe object under `uri` within seconds, or raise TrackingError
    saying which of credentials, bucket, permission or endpoint is wrong, and how to fix it."""
    bucket, prefix = split_s3_uri(uri)
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    except ImportError as exc:
        raise ConfigError(
            f"{option} {uri}: S3 needs boto3, which is not installed; "
            ".venv/bin/pip install -r requirements-s3.txt"
        ) from exc
    config = Config(
        connect_timeout=S3_CHECK_TIMEOUT_S,
        read_timeout=S3_CHECK_TIMEOUT_S,
        retries={"max_attempts": 1, "mode": "standard"},
    )
    client = boto3.client("s3", endpoint_url=os.environ.get(ENDPOINT_ENV) or None, config=config)
    endpoint = redact(client.meta.endpoint_url)
    where = f"{option} {uri} (S3 endpoint {endpoint})"
    key = "/".join(filter(None, (prefix, f".mlpipe-probe-{uuid.uuid4().hex}")))
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"")
        client.delete_object(Bucket=bucket, Key=key)
    except NoCredentialsError as exc:
        raise TrackingError(f"{where}: no S3 credentials found; {_CREDENTIALS}") from exc
    except ClientError as exc:
        raise TrackingError(f"{where}: {_refusal(exc, bucket, endpoint)}") from exc
    except BotoCoreError as exc:
        aws = "" if os.environ.get(ENDPOINT_ENV) else f", or set {ENDPOINT_ENV} to your store's"
        raise TrackingError(
            f"{where} does not answer ({redact(first_line(exc))}); start the store, "
            f"or check its address{aws}"
        ) from exc


def _refusal(exc: BaseException, bucket: str, endpoint: str) -> str:
    """What an S3 error code means for the server, and the fix."""
    code = str(exc.response.get("Error", {}).get("Code", ""))  # type: ignore[attr-defined]
    if code in _WRONG_KEY:
        return f"S3 refused the credentials ({code}): check the access key and secret; " + (
            _CREDENTIALS
        )
    if code in _NO_BUCKET:
        return (
            f"bucket {bucket!r} does not exist ({code}); create it first "
            f"(aws s3 mb s3://{bucket} --endpoint-url {endpoint})"
        )
    if code in _DENIED:
        return (
            f"these credentials may not write and delete objects in bucket {bucket!r} "
            f"({code}); grant them s3:PutObject, s3:GetObject, s3:DeleteObject, s3:ListBucket"
        )
    return f"S3 answered {code or 'an error'}: {redact(first_line(exc))}"
