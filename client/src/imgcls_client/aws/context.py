"""Region, role and bucket for the `imgcls aws` commands, found the usual way unless a flag says otherwise.

region: --region, else AWS_REGION / AWS_DEFAULT_REGION / the profile's config (boto3's order),
        never the instance metadata service; checked against botocore's list of regions.
role:   --role, else IMGCLS_SAGEMAKER_ROLE, else the caller itself when it is an assumed SageMaker
        execution role (a SageMaker notebook or Studio), as the SDK's get_execution_role does.
bucket: --bucket, else IMGCLS_BUCKET, else the SDK's default bucket sagemaker-<region>-<account>
        (created on first use, never by --dry-run); the account is the role's.
Credentials and AWS_ENDPOINT_URL are boto3's own business.

An offline context (--dry-run) creates no session and no client: botocore would look for
credentials, and maybe a region, at the instance metadata address. What only AWS can tell (the
caller's role) is refused there, with the flag that gives it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from imgcls.errors import UserError

from .validate import bucket_name_problem, check_region, shown

ROLE_ENV = "IMGCLS_SAGEMAKER_ROLE"
BUCKET_ENV = "IMGCLS_BUCKET"
ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::(?P<account>\d{12}):role/.+")


def first_given(*candidates: tuple[str, str | None]) -> tuple[str | None, str | None]:
    """(value, where it came from) of the first (source, value) candidate that has a value."""
    return next(((value, source) for source, value in candidates if value), (None, None))


@dataclass
class AwsContext:
    region: str | None = None       # --region
    role_arn: str | None = None     # --role
    bucket_name: str | None = None  # --bucket
    offline: bool = False           # --dry-run: nothing may reach AWS
    _session: object = None
    _clients: dict = field(default_factory=dict)
    _region: str | None = None
    _role: str | None = None
    _bucket: str | None = None

    def region_name(self) -> str:
        """The region, from the flag, the environment or the config file (read without any network)."""
        if self._region is None:
            region, source = first_given(("--region", self.region), ("AWS_REGION", os.environ.get("AWS_REGION")),
                                         ("AWS_DEFAULT_REGION", os.environ.get("AWS_DEFAULT_REGION")))
            if not region:
                import botocore.session
                # the profile's config file only: get_config_variable never asks the metadata service
                region, source = botocore.session.Session().get_config_variable("region"), "the AWS config file's region"
            if not region:
                raise UserError("no AWS region: pass --region, set AWS_REGION, or run `aws configure set region REGION`")
            check_region(region, source)
            self._region = region
        return self._region

    @property
    def session(self):
        if self.offline:
            raise RuntimeError("a dry run must not create an AWS session")  # a bug, not a user error
        if self._session is None:
            import boto3
            self._session = boto3.session.Session(region_name=self.region_name())
        return self._session

    def client(self, name: str):
        if name not in self._clients:
            self._clients[name] = self.session.client(name)
        return self._clients[name]

    def account(self) -> str:
        """The role's account: SageMaker only passes a role of the caller's own account."""
        return ROLE_ARN.fullmatch(self.role())["account"]

    def _identity(self) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return self.client("sts").get_caller_identity()
        except (BotoCoreError, ClientError) as exc:
            raise UserError(f"no usable AWS credentials (sts get-caller-identity failed: {exc})") from None

    def role(self) -> str:
        """The execution role SageMaker jobs and models run as."""
        if self._role is None:
            self._role = self._named_role() or self._callers_role()
        return self._role

    def _named_role(self) -> str | None:
        role, source = first_given(("--role", self.role_arn), (ROLE_ENV, os.environ.get(ROLE_ENV)))
        if role and not ROLE_ARN.fullmatch(role):
            raise UserError(f"{source} {shown(role)}: not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
        return role

    def _callers_role(self) -> str:
        if self.offline:
            raise UserError(f"--dry-run needs --role arn:aws:iam::ACCOUNT:role/NAME (or {ROLE_ENV}): without one the role "
                            "is the caller's own, which only AWS can tell")
        role = role_from_caller(self._identity()["Arn"])
        if not role:
            raise UserError(f"no SageMaker execution role: pass --role arn:aws:iam::ACCOUNT:role/NAME or set {ROLE_ENV}")
        return role

    def bucket(self, create: bool) -> str:
        """The bucket for outputs, checkpoints and TensorBoard logs (created if missing and create is true)."""
        if self._bucket is None:
            name, source = first_given(("--bucket", self.bucket_name), (BUCKET_ENV, os.environ.get(BUCKET_ENV)))
            problem = name and bucket_name_problem(name)
            if problem:
                raise UserError(f"{source} {shown(name)}: not a valid S3 bucket name ({problem})")
            self._bucket = name or f"sagemaker-{self.region_name()}-{self.account()}"
        if create:
            self._ensure_bucket(self._bucket)
        return self._bucket

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
        if self.region_name() != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region_name()}
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
