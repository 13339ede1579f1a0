"""S3, checked before the team relies on it (the server's artifact store, a DVC remote): one line
per fault.

MLflow's server starts and answers /health whatever its `--artifacts-destination` is; a wrong
secret, a missing bucket or a stopped store then shows only as HTTP 500 on each upload. So
`team serve` writes and deletes one probe object first, with the credentials and endpoint the
server will use (boto3's own lookup: the environment, AWS_PROFILE, ~/.aws/credentials; the
endpoint from MLFLOW_S3_ENDPOINT_URL, as MLflow reads it, else AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL, as boto3 reads them, else AWS itself). `team check-remote` does the same for
a DVC remote, whose `dvc push` says only "Forbidden" for most of these faults.
"""

from __future__ import annotations

import os
import uuid
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mlpipe.errors import ConfigError, TrackingError, first_line, redact

if TYPE_CHECKING:
    from botocore.config import Config

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
    boto3 = _boto3(f"{option} {uri}")
    endpoint = os.environ.get(ENDPOINT_ENV)
    client = boto3.client("s3", endpoint_url=endpoint or None, config=_probe_config())
    aws = "" if endpoint else f", or set {ENDPOINT_ENV} to your store's"
    _probe(client, uri, option, _CREDENTIALS, aws)


def check_dvc_remote(name: str | None = None, root: str = ".") -> str:
    """Probe DVC remote `name` (default: the repository's default remote) as `dvc push` reaches
    it: its url, `endpointurl`, and credentials (`credentialpath`, `profile`, keys in the config,
    else boto3's own lookup). The line saying it is writable, or TrackingError naming the fault:
    `dvc push` itself says only "Forbidden" for a wrong secret, an unknown key or no permission."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        with Repo(root) as repo:
            config = repo.config
    except NotDvcRepoError as exc:
        raise ConfigError(
            f"{os.path.abspath(root)} is not a DVC repository; run it in the clone"
        ) from exc
    name = name or config["core"].get("remote")
    if not name:
        raise ConfigError("no DVC remote named and none is the default; dvc remote list")
    remote = config["remote"].get(name)
    if remote is None:
        raise ConfigError(f"no DVC remote {name!r} here; dvc remote list shows those there are")
    option = f"DVC remote {name!r}"
    boto3 = _boto3(option)
    import botocore.session

    found = botocore.session.get_session()  # its own lookup, the credentials file DVC's if named
    if remote.get("credentialpath"):
        found.set_config_variable("credentials_file", os.path.expanduser(remote["credentialpath"]))
    session = boto3.Session(
        botocore_session=found,
        profile_name=remote.get("profile"),
        aws_access_key_id=remote.get("access_key_id"),
        aws_secret_access_key=remote.get("secret_access_key"),
        aws_session_token=remote.get("session_token"),
    )
    endpoint = remote.get("endpointurl")
    client = session.client("s3", endpoint_url=endpoint, config=_probe_config())
    fix = f"dvc remote modify --local {name} credentialpath <file>, or the AWS_* variables"
    aws = "" if endpoint else f", or dvc remote modify {name} endpointurl <your store's>"
    _probe(client, remote["url"], option, fix, aws)
    return f"{option} {remote['url']} (S3 endpoint {redact(client.meta.endpoint_url)}): writable"


def _boto3(where: str) -> ModuleType:
    """boto3, an optional requirement (requirements-s3.txt), or ConfigError saying so."""
    try:
        import boto3
    except ImportError as exc:
        raise ConfigError(
            f"{where}: S3 needs boto3, which is not installed; "
            ".venv/bin/pip install -r requirements-s3.txt"
        ) from exc
    return boto3


def _probe_config() -> Config:
    from botocore.config import Config

    return Config(
        connect_timeout=S3_CHECK_TIMEOUT_S,
        read_timeout=S3_CHECK_TIMEOUT_S,
        retries={"max_attempts": 1, "mode": "standard"},
    )


def _probe(client: Any, uri: str, option: str, credentials: str, aws: str) -> None:
    """Put and delete one probe object under `uri`; TrackingError naming the fault otherwise."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket, prefix = split_s3_uri(uri)
    endpoint = redact(client.meta.endpoint_url)
    where = f"{option} {uri} (S3 endpoint {endpoint})"
    key = "/".join(filter(None, (prefix, f".mlpipe-probe-{uuid.uuid4().hex}")))
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"")
        client.delete_object(Bucket=bucket, Key=key)
    except NoCredentialsError as exc:
        raise TrackingError(f"{where}: no S3 credentials found; {credentials}") from exc
    except ClientError as exc:
        raise TrackingError(f"{where}: {_refusal(exc, bucket, endpoint, credentials)}") from exc
    except BotoCoreError as exc:
        raise TrackingError(
            f"{where} does not answer ({redact(first_line(exc))}); start the store, "
            f"or check its address{aws}"
        ) from exc


def _refusal(exc: BaseException, bucket: str, endpoint: str, credentials: str) -> str:
    """What an S3 error code means for the server, and the fix."""
    code = str(exc.response.get("Error", {}).get("Code", ""))  # type: ignore[attr-defined]
    if code in _WRONG_KEY:
        return f"S3 refused the credentials ({code}): check the access key and secret; " + (
            credentials
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
