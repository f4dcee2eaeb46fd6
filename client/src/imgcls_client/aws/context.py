"""Region, role and bucket for the `imgcls aws` commands, found the usual way unless a flag says otherwise.

region: --region, else AWS_REGION / AWS_DEFAULT_REGION / the profile's config (boto3's order).
role:   --role, else IMGCLS_SAGEMAKER_ROLE, else the caller itself when it is an assumed SageMaker
        execution role (a SageMaker notebook or Studio), as the SDK's get_execution_role does.
bucket: --bucket, else IMGCLS_BUCKET, else the SDK's default bucket sagemaker-<region>-<account>
        (created on first use, never by --dry-run).
Credentials and AWS_ENDPOINT_URL are boto3's own business.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from imgcls.errors import UserError

ROLE_ENV = "IMGCLS_SAGEMAKER_ROLE"
BUCKET_ENV = "IMGCLS_BUCKET"


@dataclass
class AwsContext:
    region: str | None = None
    role_arn: str | None = None
    bucket_name: str | None = None
    _session: object = None
    _clients: dict = field(default_factory=dict)
    _account: str | None = None

    @property
    def session(self):
        if self._session is None:
            import boto3
            region = self.region or os.environ.get("AWS_REGION") or None
            self._session = boto3.session.Session(region_name=region)
            if not self._session.region_name:
                raise UserError("no AWS region: pass --region, set AWS_REGION, or run `aws configure set region REGION`")
            self.region = self._session.region_name
        return self._session

    def client(self, name: str):
        if name not in self._clients:
            self._clients[name] = self.session.client(name)
        return self._clients[name]

    def account(self) -> str:
        if self._account is None:
            self._account = self._identity()["Account"]
        return self._account

    def _identity(self) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return self.client("sts").get_caller_identity()
        except (BotoCoreError, ClientError) as exc:
            raise UserError(f"no usable AWS credentials (sts get-caller-identity failed: {exc})") from None

    def role(self) -> str:
        """The execution role SageMaker jobs and models run as."""
        if self.role_arn:
            return self.role_arn
        self.role_arn = os.environ.get(ROLE_ENV) or role_from_caller(self._identity()["Arn"])
        if not self.role_arn:
            raise UserError(f"no SageMaker execution role: pass --role arn:aws:iam::ACCOUNT:role/NAME or set {ROLE_ENV}")
        return self.role_arn

    def bucket(self, create: bool) -> str:
        """The bucket for outputs, checkpoints and TensorBoard logs (created if missing and create is true)."""
        if not self.bucket_name:
            self.bucket_name = os.environ.get(BUCKET_ENV) or f"sagemaker-{self.session.region_name}-{self.account()}"
        if create:
            self._ensure_bucket(self.bucket_name)
        return self.bucket_name

    def _ensure_bucket(self, name: str) -> None:
        from botocore.exceptions import ClientError
        s3 = self.client("s3")
        try:
            s3.head_bucket(Bucket=name)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise UserError(f"bucket {name} cannot be used: {exc}") from None
        args = {"Bucket": name}
        if self.session.region_name != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.session.region_name}
        s3.create_bucket(**args)
        print(f"created bucket s3://{name}/")


def role_from_caller(arn: str) -> str | None:
    """arn:aws:sts::123:assumed-role/NAME/session -> the role's IAM ARN (SageMaker notebooks run as one)."""
    m = re.fullmatch(r"arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/.+", arn)
    if not m:
        return None
    partition, account, name = m.groups()
    path = "service-role/" if name.startswith("AmazonSageMaker-ExecutionRole") else ""
    return f"arn:{partition}:iam::{account}:role/{path}{name}"
