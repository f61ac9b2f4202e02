"""Base images for FROM (vmmd/images/oci.py): pulls from a docker-registry on loopback, OCI
layouts and docker-archives, digests checked, layers flattened by umoci. One Debian base
(mmdebstrap, cached under $VMMD_CACHE/images/bases) serves the whole module; the error cases use
small layouts written by hand."""
from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess

import pytest

import images_support as sup
from vmmd.images import oci

PACKAGES = ("python3", "python3-flask", "busybox")     # the demo's base too: one cache entry
# the first test to use the base builds it on a cold cache (~1 min of mmdebstrap and gzip)
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def debian_base():
    return sup.base_image("x86_64", PACKAGES)


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    with sup.registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


@pytest.fixture(scope="module")
def pushed(reg, debian_base):
    ref = reg.ref("bases/debian-flask:bookworm")
    return ref, sup.push(debian_base, ref)


def small_layout(path, arch="x86_64", config=None, files=None, tag="latest"):
    files = files or {"etc/": None, "etc/hello": "hello\n"}
    layers = [sup.tar_layer({k.rstrip("/"): v for k, v in files.items()})]
    return sup.write_layout(path, layers, arch, config=config, tag=tag)


def test_pull_by_tag_from_loopback_registry_gives_a_root_with_the_packages(tmp_path, pushed):
    ref, digest = pushed
    image = oci.resolve(ref, tmp_path / "store", arch="x86_64")
    assert image.digest == digest and image.architecture == "x86_64"
    assert len(image.layers) == 1 and image.layers[0].digest.startswith("sha256:")
    root = oci.unpack(image, tmp_path / "root")
    assert (root / "usr/lib/python3/dist-packages/flask/__init__.py").is_file()
    assert os.path.realpath(root / "usr/bin/python3").startswith(str(root / "usr/bin/python3."))
    assert (root / "bin/busybox").is_file()
    # owners and modes as dpkg left them
    shadow = (root / "etc/shadow").stat()
    assert (shadow.st_uid, stat.S_IMODE(shadow.st_mode)) == (0, 0o640) and shadow.st_gid != 0
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777


def test_pull_by_digest_checks_the_pinned_manifest(tmp_path, reg, pushed):
    ref, digest = pushed
    pinned = ref.split(":bookworm")[0] + "@" + digest
    image = oci.resolve(pinned, tmp_path / "store", arch="x86_64")
    assert image.digest == digest
    manifest = oci.blob_path(tmp_path / "store", digest).read_bytes()
    assert "sha256:" + __import__("hashlib").sha256(manifest).hexdigest() == digest
    # a second resolve of the pin is answered from the store without the registry
    assert oci.resolve(pinned, tmp_path / "store").digest == digest


def test_a_pinned_digest_the_registry_does_not_hold_is_a_digest_mismatch(tmp_path, pushed):
    ref, digest = pushed
    other = "sha256:" + ("0" if digest[-1] != "0" else "1") * 64
    with pytest.raises(oci.ImageSourceError, match="digest mismatch.*" + other):
        oci.resolve(ref.split(":bookworm")[0] + "@" + other, tmp_path / "store")


def test_a_pinned_docker_v2_manifest_is_converted_and_its_pin_checked(tmp_path, reg):
    small_layout(tmp_path / "layout", files={"a": "v2"})
    ref = reg.ref("bases/v2:1")
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--format", "v2s2",
                    "--dest-tls-verify=false", "--digestfile", str(tmp_path / "digest"),
                    f"oci:{tmp_path / 'layout'}:latest", f"docker://{ref}"], check=True)
    pinned = reg.ref("bases/v2@") + (tmp_path / "digest").read_text().strip()
    image = oci.resolve(pinned, tmp_path / "store")
    # umoci takes OCI manifests only: the store holds the converted one, the pin is kept
    assert image.digest != image.source_digest == pinned.split("@")[1]
    assert json.loads(oci.blob_path(tmp_path / "store", image.digest).read_bytes())[
        "mediaType"] == oci.OCI_MANIFEST
    assert (oci.unpack(image, tmp_path / "root") / "a").read_text() == "v2"


@pytest.mark.parametrize("name", ["bases/debian-flask:no-such-tag", "bases/no-such-repo:v1"])
def test_a_reference_that_does_not_exist_says_so(tmp_path, reg, pushed, name):
    with pytest.raises(oci.ImageSourceError, match="does not exist"):
        oci.resolve(reg.ref(name), tmp_path / "store")
    assert not list((tmp_path / "store" / "oci" / "blobs").rglob("*"))


def test_an_unreachable_registry_says_what_to_check(tmp_path):
    with pytest.raises(oci.ImageSourceError, match="unreachable.*check the host and port"):
        oci.resolve("127.0.0.1:1/bases/x:v1", tmp_path / "store")


def test_a_layout_with_a_tampered_layer_is_refused_naming_the_blob(tmp_path):
    small_layout(tmp_path / "layout")
    manifest = json.loads(next(
        p for p in (tmp_path / "layout/blobs/sha256").iterdir()
        if b'"layers"' in p.read_bytes()).read_bytes())
    layer = manifest["layers"][0]["digest"]
    blob = tmp_path / "layout/blobs/sha256" / layer.split(":")[1]
    # same size, other content: a valid gzip of another tar
    evil = gzip.compress(sup.tar_layer({"etc": None, "etc/hello": "HACKED"}), mtime=0)
    blob.write_bytes(evil[:len(blob.read_bytes())].ljust(len(blob.read_bytes()), b"\0"))
    with pytest.raises(oci.ImageSourceError, match="digest mismatch.*" + layer):
        oci.resolve(f"oci:{tmp_path / 'layout'}", tmp_path / "store")
    assert not oci.blob_path(tmp_path / "store", layer).exists()


def test_a_corrupt_blob_in_the_store_is_named_and_removed(tmp_path):
    small_layout(tmp_path / "layout")
    image = oci.resolve(f"oci:{tmp_path / 'layout'}:latest", tmp_path / "store")
    blob = oci.blob_path(tmp_path / "store", image.layers[0].digest)
    blob.write_bytes(b"x" * blob.stat().st_size)
    with pytest.raises(oci.ImageSourceError, match="digest mismatch in layer "
                       + image.layers[0].digest):
        oci.load(tmp_path / "store", image.digest)
    assert not blob.exists()
    # pulling again repairs the store
    assert oci.resolve(f"oci:{tmp_path / 'layout'}:latest", tmp_path / "store").digest \
        == image.digest


def test_an_oci_layout_source_picks_the_tag(tmp_path):
    one = small_layout(tmp_path / "layout", files={"a": "one"}, tag="one")
    two = small_layout(tmp_path / "layout", files={"a": "two"}, tag="two")
    assert one != two
    image = oci.resolve(f"oci:{tmp_path / 'layout'}:two", tmp_path / "store")
    assert image.digest == two            # an OCI layout is copied with its digests
    assert (oci.unpack(image, tmp_path / "root") / "a").read_text() == "two"
    with pytest.raises(oci.ImageSourceError, match="three"):
        oci.resolve(f"oci:{tmp_path / 'layout'}:three", tmp_path / "store")
    with pytest.raises(oci.ImageSourceError, match="no OCI layout"):
        oci.resolve(f"oci:{tmp_path / 'nothing'}", tmp_path / "store")


def test_a_docker_archive_source_is_converted_and_unpacked(tmp_path):
    small_layout(tmp_path / "layout", config={"Cmd": ["/bin/hello"], "Env": ["A=1"]},
                 files={"bin/": None, "bin/hello": "#!/bin/sh\necho hi\n"})
    archive = tmp_path / "image.tar"
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet",
                    f"oci:{tmp_path / 'layout'}:latest", f"docker-archive:{archive}:app:v1"],
                   check=True, capture_output=True)
    image = oci.resolve(f"docker-archive:{archive}", tmp_path / "store", arch="x86_64")
    assert image.config.cmd == ("/bin/hello",) and image.config.env == ("A=1",)
    assert "echo hi" in (oci.unpack(image, tmp_path / "root") / "bin/hello").read_text()


def test_a_file_that_is_not_an_image_is_refused(tmp_path):
    (tmp_path / "junk.tar").write_bytes(os.urandom(4096))
    with pytest.raises(oci.ImageSourceError, match="junk.tar"):
        oci.resolve(f"docker-archive:{tmp_path / 'junk.tar'}", tmp_path / "store")
    with pytest.raises(oci.ImageSourceError, match="no such file"):
        oci.resolve(f"docker-archive:{tmp_path / 'missing.tar'}", tmp_path / "store")


def test_scratch_is_an_empty_root_without_config(tmp_path):
    image = oci.resolve("scratch", tmp_path / "store")
    assert image.is_scratch and image.layers == () and image.config.cmd is None
    root = oci.unpack(image, tmp_path / "root")
    assert root.is_dir() and list(root.iterdir()) == []
    assert not (tmp_path / "store").exists()


def test_the_image_config_is_read(tmp_path):
    config = {"Env": ["PATH=/usr/bin:/bin", "APP=demo"], "Cmd": ["serve", "--port", "8080"],
              "Entrypoint": ["/usr/bin/python3", "-m", "app"], "WorkingDir": "/srv/app",
              "User": "1000:1000", "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
              "Labels": {"org.example.team": "core"},
              "Healthcheck": {"Test": ["CMD", "curl", "-f", "http://localhost:8080/"],
                              "Interval": 5_000_000_000, "Retries": 3}}
    small_layout(tmp_path / "layout", config=config)
    c = oci.resolve(f"oci:{tmp_path / 'layout'}", tmp_path / "store").config
    assert c.env == ("PATH=/usr/bin:/bin", "APP=demo")
    assert c.cmd == ("serve", "--port", "8080")
    assert c.entrypoint == ("/usr/bin/python3", "-m", "app")
    assert (c.working_dir, c.user) == ("/srv/app", "1000:1000")
    assert c.exposed_ports == ("53/udp", "8080/tcp")
    assert c.labels == {"org.example.team": "core"}
    assert c.healthcheck["Test"][1] == "curl" and c.healthcheck["Retries"] == 3


def test_an_image_for_another_architecture_is_refused(tmp_path):
    small_layout(tmp_path / "layout", arch="aarch64")
    with pytest.raises(oci.ImageSourceError, match="is for aarch64, the build targets x86_64"):
        oci.resolve(f"oci:{tmp_path / 'layout'}", tmp_path / "store", arch="x86_64")
    assert oci.resolve(f"oci:{tmp_path / 'layout'}", tmp_path / "store",
                       arch="aarch64").architecture == "aarch64"


def test_whiteouts_owners_and_modes_survive_the_unpack(tmp_path):
    lower = sup.tar_layer({"etc": None, "etc/gone": "x", "etc/kept": "k", "opq": None,
                           "opq/old": "o"})
    owned = sup.tar_layer({"srv": None, "srv/tool": "#!/bin/sh\n"}, mode=0o4750, uid=1234,
                          gid=567)
    upper = sup.tar_layer({"etc": None, "etc/.wh.gone": "", "opq": None, "opq/.wh..wh..opq": "",
                           "opq/new": "n", "etc/link": "-> kept"})
    sup.write_layout(tmp_path / "layout", [lower, owned, upper])
    image = oci.resolve(f"oci:{tmp_path / 'layout'}", tmp_path / "store")
    assert len(image.layers) == 3
    root = oci.unpack(image, tmp_path / "root")
    assert not (root / "etc/gone").exists() and (root / "etc/kept").read_text() == "k"
    assert sorted(p.name for p in (root / "opq").iterdir()) == ["new"]
    assert os.readlink(root / "etc/link") == "kept"
    st = (root / "srv/tool").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 567, 0o4750)
    assert not list(root.rglob(".wh.*"))


def test_unpack_refuses_an_existing_directory(tmp_path):
    small_layout(tmp_path / "layout")
    image = oci.resolve(f"oci:{tmp_path / 'layout'}", tmp_path / "store")
    (tmp_path / "root").mkdir()
    with pytest.raises(FileExistsError):
        oci.unpack(image, tmp_path / "root")


@pytest.mark.parametrize("ref,why", [
    ("debian:bookworm", "name the registry"),
    ("https://127.0.0.1:5000/a/b", "without a scheme"),
    ("127.0.0.1:5000/a/b@sha256:abc", "64 lowercase hex"),
    ("127.0.0.1:5000/Upper/b", "lowercase"),
    ("oci:", "layout's directory"),
])
def test_malformed_references_say_what_to_write(tmp_path, ref, why):
    with pytest.raises(oci.ImageSourceError, match=why):
        oci.resolve(ref, tmp_path / "store")


def test_plain_http_is_allowed_only_for_loopback_registries():
    assert oci.parse_reference("127.0.0.1:5000/a/b:v1").loopback
    assert oci.parse_reference("localhost:5000/a/b").loopback
    assert oci.parse_reference("[::1]:5000/a/b").loopback
    assert not oci.parse_reference("10.1.2.3:5000/a/b").loopback
    assert not oci.parse_reference("registry.example:5000/a/b").loopback
    assert oci.parse_reference("10.1.2.3:5000/a/b").skopeo == "docker://10.1.2.3:5000/a/b:latest"
    assert oci._tls(oci.parse_reference("10.1.2.3:5000/a/b"), "src") == []
    assert oci._tls(oci.parse_reference("127.0.0.1:5000/a/b"), "src") == \
        ["--src-tls-verify=false"]
