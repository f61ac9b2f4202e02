"""Base images for `FROM`: scratch, a registry reference, an OCI layout or a docker-archive
tarball, pulled with Debian's skopeo into a content-addressed store and unpacked with umoci
(docs/images.md, "Base images").

    <store>/oci/                 one OCI image layout shared by every pull
      oci-layout, index.json     index.json tags each pulled manifest as "sha256-<hex>"
      blobs/sha256/<hex>         manifests, configs and layers, each verified after the copy
    <store>/lock                 flock: pulls and index.json rewrites are serialized

skopeo checks what it copies, but the store is trusted by everything after it (the step cache
keys on these digests), so every blob an image names is hashed again here after the copy, and a
blob whose content does not match its name is removed and named in the error.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import ipaddress
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

from vmmd.errors import InvalidArgument

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
REF_NAME = "org.opencontainers.image.ref.name"
# vmmd's architecture names against OCI's (GOARCH)
OCI_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
VMMD_ARCH = {v: k for k, v in OCI_ARCH.items()}
SKOPEO_TIMEOUT = 600        # seconds for one copy: a base of a few hundred MiB on loopback
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class ImageSourceError(InvalidArgument):
    """A base image cannot be had: the message says which reference and what to change."""


@dataclasses.dataclass(frozen=True)
class Layer:
    digest: str             # sha256:<hex> of the blob as stored (usually gzip)
    size: int
    media_type: str


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """The parts of the image config a Dockerfile build inherits (OCI image-spec config.config)."""
    env: tuple[str, ...] = ()
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()         # "8080/tcp", sorted
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    healthcheck: dict | None = None             # Docker's {"Test": [...], "Interval": ns, ...}

    @classmethod
    def from_json(cls, c: dict | None) -> ImageConfig:
        c = c or {}

        def strings(v, what):
            if v is None:
                return None
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                raise ImageSourceError(f"the image config's {what} is not a list of strings")
            return tuple(v)

        labels = c.get("Labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in labels.items()):
            raise ImageSourceError("the image config's Labels is not a map of strings")
        ports = c.get("ExposedPorts") or {}
        if not isinstance(ports, dict):
            raise ImageSourceError("the image config's ExposedPorts is not a map")
        hc = c.get("Healthcheck")
        return cls(env=strings(c.get("Env"), "Env") or (),
                   cmd=strings(c.get("Cmd"), "Cmd"),
                   entrypoint=strings(c.get("Entrypoint"), "Entrypoint"),
                   working_dir=str(c.get("WorkingDir") or ""),
                   user=str(c.get("User") or ""),
                   exposed_ports=tuple(sorted(str(p) for p in ports)),
                   labels=dict(labels),
                   healthcheck=hc if isinstance(hc, dict) else None)


@dataclasses.dataclass(frozen=True)
class BaseImage:
    """A verified image in the store, or scratch (digest "scratch", no layers, no store)."""
    ref: str                        # the reference it was resolved from
    digest: str                     # sha256:<hex> of the manifest in the store, or "scratch"
    architecture: str | None        # vmmd's name (x86_64, aarch64); None for scratch
    config: ImageConfig
    layers: tuple[Layer, ...]
    store: pathlib.Path | None
    config_digest: str | None = None
    source_digest: str | None = None  # the reference's @sha256 when it named a list or was converted

    @property
    def is_scratch(self) -> bool:
        return self.digest == "scratch"

    @property
    def tag(self) -> str:
        """Its name in the store's index.json (umoci and skopeo address it by this)."""
        return self.digest.replace(":", "-")


SCRATCH_CONFIG = ImageConfig()


def scratch() -> BaseImage:
    return BaseImage(ref="scratch", digest="scratch", architecture=None, config=SCRATCH_CONFIG,
                     layers=(), store=None)


# --- references ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Source:
    kind: str               # "registry", "oci", "docker-archive"
    skopeo: str             # the source argument for skopeo
    digest: str | None      # a pinned sha256:<hex>
    loopback: bool = False  # plain http allowed


def _is_loopback(host: str) -> bool:
    h = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:host.index("]")]
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def parse_reference(ref: str) -> Source:
    """oci:PATH[:tag], docker-archive:PATH, or host[:port]/repo[:tag|@sha256:<hex>]."""
    if ref.startswith("oci:"):
        rest = ref[4:]
        path, tag = rest, None
        # PATH may hold colons; a tag is what follows the last one if it has no slash
        if ":" in rest:
            p, t = rest.rsplit(":", 1)
            if t and "/" not in t:
                path, tag = p, t
        if not path:
            raise ImageSourceError(f"{ref!r}: name the layout's directory (oci:PATH[:tag])")
        return Source("oci", f"oci:{os.path.abspath(path)}" + (f":{tag}" if tag else ""), None)
    if ref.startswith("docker-archive:"):
        path = ref[len("docker-archive:"):]
        if not path:
            raise ImageSourceError(f"{ref!r}: name the tarball (docker-archive:PATH)")
        return Source("docker-archive", f"docker-archive:{os.path.abspath(path)}", None)
    if "://" in ref or ref.startswith("docker:"):
        raise ImageSourceError(f"{ref!r}: write a registry reference without a scheme "
                               "(host:port/repo:tag), or use oci:PATH or docker-archive:PATH")
    name, digest = ref, None
    if "@" in ref:
        name, digest = ref.split("@", 1)
        if not DIGEST_RE.match(digest):
            raise ImageSourceError(f"{ref!r}: a pinned digest is sha256: and 64 lowercase hex "
                                   "digits")
    host, _, path = name.partition("/")
    if not path or not ("." in host or ":" in host or host == "localhost"):
        raise ImageSourceError(f"{ref!r}: name the registry (host:port/repo[:tag]); vmmd has no "
                               "default registry")
    last = path.rsplit("/", 1)[-1]
    if ":" in last and digest is None:
        repo_tag = last.split(":", 1)[1]
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", repo_tag):
            raise ImageSourceError(f"{ref!r}: {repo_tag!r} is not a valid tag")
    elif digest is None:
        name += ":latest"
    component = r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
    if not re.fullmatch(rf"{component}(?:/{component})*(?::[A-Za-z0-9_.-]+)?",
                        name.split("/", 1)[1]):
        raise ImageSourceError(f"{ref!r}: a repository name is lowercase letters, digits and "
                               "separators (. _ - /)")
    return Source("registry", f"docker://{name}" + (f"@{digest}" if digest else ""), digest,
                  loopback=_is_loopback(host))


# --- the store -----------------------------------------------------------------------------

def _layout(store: pathlib.Path) -> pathlib.Path:
    return store / "oci"


def blob_path(store: pathlib.Path, digest: str) -> pathlib.Path:
    if not DIGEST_RE.match(digest):
        raise ImageSourceError(f"{digest!r} is not a sha256 digest this store can hold")
    return _layout(store) / "blobs" / "sha256" / digest.split(":", 1)[1]


@contextlib.contextmanager
def _locked(store: pathlib.Path, shared: bool = False):
    store.mkdir(parents=True, exist_ok=True)
    with open(store / "lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield


def _sha256_file(path: pathlib.Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return "sha256:" + h.hexdigest(), n


def _verified_blob(store: pathlib.Path, digest: str, size: int | None, what: str,
                   ref: str) -> bytes | None:
    """Hash one blob; remove it and fail naming it if its content is not its name. Returns
    the content for small blobs (manifests and configs), None for layers."""
    p = blob_path(store, digest)
    if not p.is_file():
        raise ImageSourceError(f"{ref}: {what} {digest} is missing after the copy; pull again")
    got, n = _sha256_file(p)
    if got != digest:
        p.unlink(missing_ok=True)
        raise ImageSourceError(f"{ref}: digest mismatch in {what} {digest}: its content hashes "
                               f"to {got}; the source is corrupt or was tampered with (the blob "
                               "was removed from the store)")
    if size is not None and n != size:
        raise ImageSourceError(f"{ref}: {what} {digest} is {n} bytes, the manifest says {size}")
    if n <= 4 << 20:
        return p.read_bytes()
    return None


def _json(data: bytes, what: str, ref: str) -> dict:
    try:
        v = json.loads(data)
    except ValueError as e:
        raise ImageSourceError(f"{ref}: the {what} is not JSON ({e}); this is not an image")
    if not isinstance(v, dict):
        raise ImageSourceError(f"{ref}: the {what} is not a JSON object; this is not an image")
    return v


def load(store: pathlib.Path, digest: str, ref: str | None = None) -> BaseImage:
    """The image whose manifest is `digest` in the store, verified blob by blob."""
    if digest == "scratch":
        return scratch()
    ref = ref or digest
    manifest = _json(_verified_blob(store, digest, None, "manifest", ref), "manifest", ref)
    mt = manifest.get("mediaType", OCI_MANIFEST)
    if mt in (OCI_INDEX, DOCKER_LIST) or "manifests" in manifest:
        raise ImageSourceError(f"{ref}: {digest} is an index, not an image manifest")
    if mt not in (OCI_MANIFEST, DOCKER_MANIFEST) or not isinstance(manifest.get("config"), dict):
        raise ImageSourceError(f"{ref}: the manifest's media type {mt!r} is not an image; "
                               "use an OCI or Docker v2 image")
    cdesc = manifest["config"]
    config = _json(_verified_blob(store, str(cdesc.get("digest")), cdesc.get("size"),
                                  "config", ref), "config", ref)
    layers = []
    for d in manifest.get("layers") or []:
        if not isinstance(d, dict):
            raise ImageSourceError(f"{ref}: a layer descriptor is not an object")
        _verified_blob(store, str(d.get("digest")), d.get("size"), "layer", ref)
        layers.append(Layer(d["digest"], int(d["size"]), str(d.get("mediaType", ""))))
    arch = config.get("architecture")
    return BaseImage(ref=ref, digest=digest, architecture=VMMD_ARCH.get(arch, arch),
                     config=ImageConfig.from_json(config.get("config")), layers=tuple(layers),
                     store=store, config_digest=cdesc["digest"])


def _read_index(store: pathlib.Path) -> dict:
    p = _layout(store) / "index.json"
    return json.loads(p.read_text()) if p.exists() else {"schemaVersion": 2, "manifests": []}


def _write_index(store: pathlib.Path, index: dict) -> None:
    p = _layout(store) / "index.json"
    tmp = p.with_name(".index.json.tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, p)


# --- skopeo --------------------------------------------------------------------------------

def _explain(ref: str, src: Source, err: str) -> str:
    """skopeo's error in words a Dockerfile author can act on."""
    e = err.lower()
    if src.kind == "registry":
        if "server gave http response to https client" in e:
            return (f"{ref}: the registry speaks plain HTTP; vmmd allows that only on loopback. "
                    "Serve it over TLS")
        if any(s in e for s in ("connection refused", "no such host", "i/o timeout",
                                "network is unreachable", "connection reset", "no route to host",
                                "dial tcp")):
            return (f"{ref}: the registry is unreachable ({_last(err)}); check the host and "
                    "port and that the registry is running")
        if "no image found in" in e and "architecture" in e:
            return (f"{ref}: the image has no variant for this architecture; pick a reference "
                    "built for it or build for another --arch")
        if src.digest and "manifest unknown" in e:
            return (f"{ref}: digest mismatch: the registry holds no manifest {src.digest} in that "
                    "repository; pin the digest the image has now, or drop the pin")
        if any(s in e for s in ("manifest unknown", "name unknown", "not found", "404")):
            return (f"{ref}: the reference does not exist in the registry; check the repository "
                    "name, tag or digest (push it first)")
        if "unauthorized" in e or "denied" in e:
            return f"{ref}: the registry refused access; vmmd pulls anonymously"
    if "digest did not match" in e or "does not match" in e and "digest" in e:
        return (f"{ref}: digest mismatch while copying ({_last(err)}); the source is corrupt "
                "or was tampered with")
    if src.kind == "oci" and ("no such file" in e or "not a directory" in e):
        return f"{ref}: no OCI layout there (no index.json); check the path"
    if src.kind == "oci" and ("no descriptor found" in e or "did not match any" in e):
        return f"{ref}: the layout has no image with that tag; check the tag after the last ':'"
    if src.kind == "docker-archive" and ("no such file" in e):
        return f"{ref}: no such file; check the tarball's path"
    return f"{ref}: cannot copy this image ({_last(err)}); check that it names an image"


def _last(err: str) -> str:
    """skopeo's last line without its logrus decoration (time=... level=fatal msg="...")."""
    line = err.strip().splitlines()[-1] if err.strip() else "no output"
    m = re.search(r'msg="((?:[^"\\]|\\.)*)"', line)
    return m.group(1).replace('\\"', '"') if m else line


def _skopeo(args: list[str], ref: str, src: Source) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(["skopeo", *args], capture_output=True, text=True,
                           timeout=SKOPEO_TIMEOUT)
    except FileNotFoundError:
        raise ImageSourceError("skopeo is not installed: run scripts/setup.sh") from None
    except subprocess.TimeoutExpired:
        raise ImageSourceError(f"{ref}: the copy took longer than {SKOPEO_TIMEOUT} s; check the "
                               "registry") from None
    if r.returncode != 0:
        e = ImageSourceError(_explain(ref, src, r.stderr))
        e.stderr = r.stderr
        raise e
    return r


def _tls(src: Source, flag: str) -> list[str]:
    # plain http only for loopback registries; skopeo then tries https first, then http
    name = f"--{flag}-tls-verify" if flag else "--tls-verify"
    return [f"{name}=false"] if src.kind == "registry" and src.loopback else []


def resolve(ref: str, store: pathlib.Path, arch: str | None = None) -> BaseImage:
    """Pull `ref` into the store (if not there already) and return it verified. `arch` (vmmd's
    name or OCI's) picks a variant from a multi-arch index and must match the image's config."""
    ref = ref.strip()
    if ref == "scratch":
        return scratch()
    store = pathlib.Path(store)
    src = parse_reference(ref)
    want = None
    if arch is not None:
        want = OCI_ARCH.get(arch, arch)
        if want not in VMMD_ARCH:
            raise ImageSourceError(f"unknown architecture {arch!r}; use one of {list(OCI_ARCH)}")
    if src.digest and blob_path(store, src.digest).is_file():
        try:        # pinned and already stored: content addressing makes this the same image
            return _check_arch(load(store, src.digest, ref), want)
        except ImageSourceError:
            pass    # an index, or a corrupt blob (now removed): pull again
    with _locked(store):
        layout = _layout(store)
        layout.mkdir(parents=True, exist_ok=True)
        tmp_tag = f"pull-{os.getpid()}-{os.urandom(4).hex()}"
        # --format oci: umoci unpacks OCI manifests only (Docker v2 ones are converted)
        base = ["--insecure-policy", "copy", "--quiet", "--format", "oci"] + _tls(src, "src")
        if want:
            base += ["--override-arch", want, "--override-os", "linux"]
        dest = f"oci:{layout}:{tmp_tag}"
        # an OCI image keeps its digest; a Docker v2 manifest (registry or docker-archive) must
        # be converted to OCI, a new digest. skopeo 1.9 lets --preserve-digests win over
        # --format silently, so the result's media type decides whether to copy again.
        # A docker-archive is always converted: a preserved copy would store its uncompressed
        # layers, which skopeo 1.9 then reuses under a +gzip media type in the converted copy.
        if src.kind != "docker-archive":
            try:
                _skopeo(base + ["--preserve-digests", src.skopeo, dest], ref, src)
            except ImageSourceError as e:
                if "preserve" not in getattr(e, "stderr", "").lower():
                    raise
        index = _read_index(store)
        mine = [m for m in index.get("manifests", [])
                if (m.get("annotations") or {}).get(REF_NAME) == tmp_tag]
        if len(mine) != 1 or mine[0].get("mediaType") != OCI_MANIFEST:
            _skopeo(base + [src.skopeo, dest], ref, src)
            index = _read_index(store)
            mine = [m for m in index.get("manifests", [])
                    if (m.get("annotations") or {}).get(REF_NAME) == tmp_tag]
        if len(mine) != 1:
            raise ImageSourceError(f"{ref}: skopeo left no manifest in the store")
        digest = mine[0]["digest"]
        try:
            image = load(store, digest, ref)
        finally:
            # name the manifest by its digest (umoci unpacks by name) and forget the temporary tag
            tag = digest.replace(":", "-")
            keep = [m for m in index["manifests"]
                    if (m.get("annotations") or {}).get(REF_NAME) not in (tmp_tag, tag)]
            if blob_path(store, digest).is_file():
                keep.append({**mine[0], "annotations": {REF_NAME: tag}})
            index["manifests"] = keep
            _write_index(store, index)
    if src.digest and src.digest != digest:
        image = dataclasses.replace(image, source_digest=_check_pinned(ref, src, digest, image))
    return _check_arch(image, want)


def _check_pinned(ref: str, src: Source, digest: str, image: BaseImage) -> str:
    """A pinned reference whose stored manifest has another digest: the pin named a multi-arch
    index, or skopeo converted a Docker manifest to OCI. Fetch the pinned bytes, hash them
    ourselves, and accept only an index that lists this manifest, or a manifest with the same
    layers (skopeo fetched its config by digest and converted it)."""
    raw = _skopeo(["inspect", "--raw"] + _tls(src, "") + [src.skopeo], ref, src).stdout
    got = "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
    if got != src.digest:
        raise ImageSourceError(f"{ref}: digest mismatch: the registry's manifest hashes to {got}, "
                               f"not {src.digest}")
    m = _json(raw.encode(), "pinned manifest", ref)
    listed = {d.get("digest") for d in m.get("manifests") or [] if isinstance(d, dict)}
    # a conversion rewrites the config (new digest) but keeps the layer blobs
    layers = [d.get("digest") for d in m.get("layers") or [] if isinstance(d, dict)]
    if digest not in listed and layers != [layer.digest for layer in image.layers]:
        raise ImageSourceError(f"{ref}: digest mismatch: {src.digest} does not describe the "
                               f"image pulled ({digest})")
    return src.digest


def _check_arch(image: BaseImage, want: str | None) -> BaseImage:
    if want and image.architecture != VMMD_ARCH[want]:
        raise ImageSourceError(
            f"{image.ref}: the image is for {image.architecture or 'no architecture'}, the build "
            f"targets {VMMD_ARCH[want]}: use a reference built for {VMMD_ARCH[want]} or build for "
            f"--arch {image.architecture}")
    return image


# --- unpacking -----------------------------------------------------------------------------

def unpack(base: BaseImage, dest: pathlib.Path) -> pathlib.Path:
    """The image's layers flattened into the new directory `dest` (whiteouts applied, owners,
    modes and xattrs kept; run as root). umoci does the applying and checks blob digests again."""
    dest = pathlib.Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists; unpack makes a new directory")
    if base.is_scratch:
        dest.mkdir(parents=True)
        os.chmod(dest, 0o755)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        with _locked(base.store, shared=True):
            r = subprocess.run(["umoci", "unpack", "--image",
                                f"{_layout(base.store)}:{base.tag}", str(work / "bundle")],
                               capture_output=True, text=True)
        if r.returncode != 0:
            raise ImageSourceError(f"{base.ref}: umoci cannot unpack {base.digest}: "
                                   f"{r.stderr.strip()[-500:]}")
        os.rename(work / "bundle" / "rootfs", dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest
