"""The GCP backend's store program: a node's access to the artifact bucket before its software
environment exists (commands and exit codes: :mod:`coiled_core.node.bootstrap`).

Standard library only. It authenticates as the node's service account with a token from the
metadata server (offline: ``COILED_GCP_ENDPOINT``, and ``COILED_GCP_TOKEN``, the account's token
as the stand-in hands it to the machine). ``create`` is an
upload with ``ifGenerationMatch=0``: Cloud Storage writes it only if no object has the name
(412 otherwise). Settings (JSON in ``COILED_STORE``): ``bucket``; ``token`` only when a client
runs it to pre-build an environment (``coiled env build``), with the client's own access token.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

MISSING, EXISTS = 2, 3
METADATA_TOKEN = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"


def token():
    given = json.loads(os.environ.get("COILED_STORE") or "{}").get("token")
    if given:
        return given
    if os.environ.get("COILED_GCP_TOKEN"):
        return os.environ["COILED_GCP_TOKEN"]
    request = urllib.request.Request(METADATA_TOKEN, headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)["access_token"]


def call(method, url, data=None):
    # The node's service account and its grants are new: IAM may refuse it (403) for a minute
    # or two until they reach every server, so a refusal is asked again for a while.
    deadline = time.monotonic() + 180
    while True:
        request = urllib.request.Request(url, data=data, method=method, headers={"Authorization": f"Bearer {token()}"})
        if data is not None:
            request.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(request, timeout=600) as reply:
                return reply.read()
        except urllib.error.HTTPError as e:
            if e.code != 403 or time.monotonic() > deadline:
                raise
        time.sleep(5)


def main(argv):
    bucket = json.loads(os.environ["COILED_STORE"])["bucket"]
    base = os.environ.get("COILED_GCP_ENDPOINT") or "https://storage.googleapis.com"
    command, args = argv[0], argv[1:]
    try:
        if command == "get":
            key, target = args
            data = call("GET", f"{base}/storage/v1/b/{bucket}/o/{urllib.parse.quote(key, safe='')}?alt=media")
            with open(target, "wb") as f:
                f.write(data)
        elif command in ("put", "create"):
            path, key = args
            query = {"uploadType": "media", "name": key, **({"ifGenerationMatch": "0"} if command == "create" else {})}
            with open(path, "rb") as f:
                call("POST", f"{base}/upload/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}", f.read())
        else:
            print(f"unknown command {command!r}", file=sys.stderr)
            return 1
    except urllib.error.HTTPError as e:
        if command == "get" and e.code == 404:
            return MISSING
        if command == "create" and e.code == 412:
            return EXISTS
        print(f"gcs {command} {args}: HTTP {e.code}: {e.read()[:300]!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
