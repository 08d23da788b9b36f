# Create an S3 bucket unless it exists; prints "created" or "exists".
# Usage: ensure_bucket.py <bucket> <env file>. Credentials and the endpoint are read from the
# service's env file (KEY=VALUE lines), never from the command line or the task's
# environment, which become/sudo would log.
import sys

import boto3
from botocore.exceptions import ClientError

bucket, env_file = sys.argv[1], sys.argv[2]
settings = {}
with open(env_file, encoding="utf-8") as lines:
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            settings[key] = value
s3 = boto3.client(
    "s3",
    endpoint_url=settings.get("MLFLOW_S3_ENDPOINT_URL") or None,
    aws_access_key_id=settings["AWS_ACCESS_KEY_ID"],
    aws_secret_access_key=settings["AWS_SECRET_ACCESS_KEY"],
    region_name=settings.get("AWS_DEFAULT_REGION") or None,
)
try:
    s3.head_bucket(Bucket=bucket)
    print("exists")
except ClientError as exc:
    if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
        raise
    s3.create_bucket(Bucket=bucket)
    print("created")
