# Make a MinIO user match a spec: one canned policy with the given document, the user with
# the given secret, enabled, with exactly that policy attached. Checks first and changes
# only what differs; prints {"changed": [...]} (what it changed; empty: nothing).
#
# The spec is JSON on stdin, never on a command line:
#   admin:  argv of mc as an administrator (the root-only mlops-mc wrapper, which takes the
#           root credentials from /etc/mlops/minio.env into mc's environment)
#   alias:  that wrapper's alias ("local")
#   mc:     argv of mc itself, for the check as the user
#   endpoint, user, secret, policy_name, policy (the document), bucket
# The user's secret reaches mc only on its stdin (`mc admin user add ALIAS ACCESSKEY` reads
# the secret key from there) and, for the check, in mc's environment (MC_HOST_<alias>):
# neither shows in the process list. Nothing printed here holds it: mc's own output is only
# read (with --json, `user add` would print the secret key back; it runs without).
import json
import os
import subprocess
import sys
import tempfile
from urllib.parse import quote, urlsplit

spec = json.load(sys.stdin)
admin, alias = spec["admin"], spec["alias"]
user, secret, policy_name = spec["user"], spec["secret"], spec["policy_name"]
changed = []


class McError(Exception):
    def __init__(self, what, code, message):
        super().__init__(f"{what}: {code or 'error'}: {message}")
        self.code = code


def mc(argv, what, stdin="", env=None):
    """Run mc with --json; return its last JSON message, raise McError with its code."""
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env)
    messages = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    last = messages[-1] if messages else {}
    if done.returncode != 0 or last.get("status") == "error":
        cause = last.get("error", {}).get("cause", {})
        code = cause.get("error", {}).get("Code", "")
        message = cause.get("message") or last.get("error", {}).get("message") or done.stderr
        raise McError(what, code, message.strip()[:500])
    return last


def run_quietly(argv, what, stdin):
    """Run an mc command whose output may hold the secret: only its exit status is used."""
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        # Its error names the user, never the secret (that came on stdin, not in argv).
        output = (done.stderr + done.stdout).replace(secret, "****")
        raise McError(what, "", output.strip()[-500:])


def canonical(document):
    """A policy document in a form that compares equal whatever the order of its lists."""

    def as_list(value):
        return sorted(value) if isinstance(value, list) else [value]

    statements = [
        json.dumps(
            {k: as_list(v) if k in ("Action", "Resource", "NotAction") else v for k, v in s.items()},
            sort_keys=True,
        )
        for s in document.get("Statement", [])
    ]
    return {"Version": document.get("Version"), "Statement": sorted(statements)}


def set_policy():
    try:
        info = mc([*admin, "admin", "policy", "info", "--json", alias, policy_name], "policy info")
        current = info.get("policyInfo", {}).get("Policy", {})
    except McError as exc:
        if exc.code != "XMinioAdminNoSuchPolicy":
            raise
        current = None
    if current is not None and canonical(current) == canonical(spec["policy"]):
        return
    # mc reads the document from a file: this one is a pipe (nothing secret in it anyway).
    mc(
        [*admin, "admin", "policy", "create", "--json", alias, policy_name, "/dev/stdin"],
        "policy create",
        stdin=json.dumps(spec["policy"]),
    )
    changed.append("policy created" if current is None else "policy updated")


def add_user(why):
    run_quietly([*admin, "admin", "user", "add", alias, user], "user add", secret + "\n")
    changed.append(why)


def user_info():
    return mc([*admin, "admin", "user", "info", "--json", alias, user], "user info")


def set_user():
    try:
        info = user_info()
    except McError as exc:
        if exc.code != "XMinioAdminNoSuchUser":
            raise
        add_user("user created")
        info = user_info()
    if info.get("userStatus") != "enabled":
        mc([*admin, "admin", "user", "enable", "--json", alias, user], "user enable")
        changed.append("user enabled")
    attached = {p for p in info.get("policyName", "").split(",") if p}
    if policy_name not in attached:
        mc(
            [*admin, "admin", "policy", "attach", "--json", alias, policy_name, "--user", user],
            "policy attach",
        )
        changed.append("policy attached")
    others = sorted(attached - {policy_name})
    if others:
        mc(
            [*admin, "admin", "policy", "detach", "--json", alias, *others, "--user", user],
            "policy detach",
        )
        changed.append("detached " + ",".join(others))


def secret_works():
    """List a prefix of the bucket as the user (cheap, allowed by the policy): True when the
    secret is the server's, False when the server refuses the signature."""
    url = urlsplit(spec["endpoint"])
    host = f"{url.scheme}://{quote(user, safe='')}:{quote(secret, safe='')}@{url.netloc}"
    with tempfile.TemporaryDirectory(prefix="mlops-mc-") as config:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MC_HOST_check": host}
        argv = [*spec["mc"], "--config-dir", config, "ls", "--json"]
        try:
            mc([*argv, f"check/{spec['bucket']}/.mlops-credential-check/"], "check", env=env)
        except McError as exc:
            if exc.code in ("SignatureDoesNotMatch", "InvalidAccessKeyId"):
                return False
            raise
    return True


try:
    set_policy()
    set_user()
    # A secret rotated in the secrets folder: `user add` on an existing user sets its secret
    # and keeps its policies and status.
    if not secret_works():
        add_user("secret set")
        if not secret_works():
            raise McError("check", "", f"the server refuses {user}'s new secret")
except McError as exc:
    print(str(exc).replace(secret, "****"), file=sys.stderr)
    sys.exit(1)
print(json.dumps({"changed": changed}))
