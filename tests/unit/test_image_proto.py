"""How a stored image reads over the API (vmmd/api/convert.py): a built image shows its arch
and its Dockerfile's settings; a registered snapshot has an empty config."""
from __future__ import annotations

from vmmd.api import convert


def stored(meta: dict) -> dict:
    base = {"vcpus": 1, "memory_mib": 256, "devices": {"linux": True, "net": True},
            "agent": {"present": True}, "labels": {"app": "web"}}
    return {"id": "img-" + "0" * 32, "name": "web", "digest": "0" * 64, "created": 1.0,
            "meta": {**base, **meta}}


def test_a_built_image_shows_its_arch_and_dockerfile_config():
    img = convert.image(stored({
        "arch": "aarch64", "source": "dockerfile:sha256:ab",
        "config": {"env": {"PATH": "/usr/bin", "GREETING": "hi"}, "workdir": "/app",
                   "user": "app", "entrypoint": [], "cmd": ["python3", "app.py"],
                   "exposed_ports": ["8000/tcp"], "labels": {"team": "x"},
                   "healthcheck": None, "digest": "sha256:ab", "base_digest": "sha256:cd",
                   "build_timings": {"total_s": 3.0}}}), users=2)
    assert img.arch == "aarch64" and img.microvms == 2
    c = img.config
    assert dict(c.env) == {"PATH": "/usr/bin", "GREETING": "hi"}
    assert (c.workdir, c.user, list(c.cmd), list(c.exposed_ports)) == \
        ("/app", "app", ["python3", "app.py"], ["8000/tcp"])
    assert (c.build_digest, c.base_digest) == ("sha256:ab", "sha256:cd")


def test_a_registered_snapshot_has_no_config_and_older_rows_no_arch():
    img = convert.image(stored({}), users=0)
    assert img.arch == "" and img.config.ByteSize() == 0
    assert img.labels["app"] == "web"
