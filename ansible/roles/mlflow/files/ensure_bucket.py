# Create an S3 bucket unless it exists; prints "created" or "exists". Credentials and the
# endpoint come from AWS_* environment variables (never from the command line).
import sys

import boto3
from botocore.exceptions import ClientError

bucket = sys.argv[1]
s3 = boto3.client("s3")
try:
    s3.head_bucket(Bucket=bucket)
    print("exists")
except ClientError as exc:
    if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
        raise
    s3.create_bucket(Bucket=bucket)
    print("created")
