"""Base images for the tests and the demo, made from Debian packages and served from a registry
on loopback, so nothing is fetched from a registry other than Debian's (docs/images.md).

    registry()                  Debian's docker-registry on 127.0.0.1:<free port>, a context manager
    base_image(arch, packages)  an OCI layout of a minbase Debian with the packages (mmdebstrap),
                                cached under $VMMD_CACHE/images/bases/<arch>-<hash>
    write_layout(dir, layers)   an OCI layout from tar layers, written by hand (one tag)
    push(layout, ref)           skopeo copy of a layout into a loopback registry
"""
from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import pathlib
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.request

from vmmd.images.oci import OCI_ARCH, OCI_INDEX, OCI_MANIFEST, REF_NAME
from vmmd.images.paths import cache_root

SUITE = "bookworm"
BUILDER_VERSION = 1          # bump when the way bases are made changes: new cache keys
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --- the registry --------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    def __init__(self, root: pathlib.Path):
        self.root = root
        self.port = _free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def ref(self, repo: str) -> str:
        return f"{self.host}/{repo}"

    def start(self) -> Registry:
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        cfg = self.root / "config.yml"
        cfg.write_text(json.dumps({            # JSON is YAML
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.root / "data")},
                        "delete": {"enabled": True}},
            "http": {"addr": self.host},
        }))
        self.log = open(self.root / "registry.log", "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"docker-registry did not start: "
                                   f"{(self.root / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()                   # by its own pid
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.log.close()


@contextlib.contextmanager
def registry(root: pathlib.Path | None = None):
    """A docker-registry on loopback with its storage in `root` (a temp dir by default)."""
    with contextlib.ExitStack() as stack:
        if root is None:
            root = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="vmmd-registry-")))
        reg = Registry(pathlib.Path(root)).start()
        try:
            yield reg
        finally:
            reg.stop()


def push(layout: pathlib.Path, ref: str, tag: str = "latest", archive: bool = False) -> str:
    """Copy the layout's image `tag` to the loopback registry reference `ref` (host:port/repo:tag);
    returns the manifest digest the registry holds."""
    with tempfile.TemporaryDirectory() as tmp:
        digest_file = pathlib.Path(tmp) / "digest"
        subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
                        "--preserve-digests", "--digestfile", str(digest_file),
                        f"oci:{layout}:{tag}", f"docker://{ref}"],
                       check=True, capture_output=True, text=True)
        return digest_file.read_text().strip()


# --- OCI layouts written by hand -----------------------------------------------------------

def _blob(layout: pathlib.Path, data: bytes, media_type: str) -> dict:
    d = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / d).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{d}", "size": len(data)}


def tar_layer(files: dict[str, bytes | str | None], mode: int = 0o644, uid: int = 0,
              gid: int = 0) -> bytes:
    """An uncompressed tar: path -> content (bytes), a symlink target ("-> target"), or None for
    a directory. Whiteouts are ordinary names (".wh.x", ".wh..wh..opq")."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.uid, info.gid, info.mtime = uid, gid, 1700000000
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            elif isinstance(content, str) and content.startswith("-> "):
                info.type, info.linkname = tarfile.SYMTYPE, content[3:]
                t.addfile(info)
            else:
                data = content.encode() if isinstance(content, str) else content
                info.size, info.mode = len(data), mode
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_layout(layout: pathlib.Path, layers: list[bytes], arch: str = "x86_64",
                 config: dict | None = None, tag: str = "latest", gzipped: bool = False) -> str:
    """An OCI image layout holding one image: `layers` are uncompressed tars (gzip-compressed
    here unless `gzipped` says they already are). Returns the manifest digest."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    descs, diff_ids = [], []
    for layer in layers:
        raw = gzip.decompress(layer) if gzipped else layer
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        gz = layer if gzipped else gzip.compress(layer, compresslevel=6, mtime=0)
        descs.append(_blob(layout, gz, LAYER_GZIP))
    oci_arch = OCI_ARCH.get(arch, arch)
    cfg = {"architecture": oci_arch, "os": "linux",
           "config": config if config is not None else {"Env": [PATH_ENV], "Cmd": ["/bin/sh"]},
           "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    cdesc = _blob(layout, json.dumps(cfg, sort_keys=True).encode(), CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc, "layers": descs}
    mdesc = _blob(layout, json.dumps(manifest, sort_keys=True).encode(), OCI_MANIFEST)
    mdesc["annotations"] = {REF_NAME: tag}
    mdesc["platform"] = {"architecture": oci_arch, "os": "linux"}
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    index["manifests"] = [m for m in index["manifests"]
                          if (m.get("annotations") or {}).get(REF_NAME) != tag] + [mdesc]
    index_path.write_text(json.dumps(index))
    return mdesc["digest"]


# --- Debian bases --------------------------------------------------------------------------

def bases_dir() -> pathlib.Path:
    return cache_root() / "images" / "bases"


def ensure_binfmt(arch: str) -> None:
    """A foreign arch needs its maintainer scripts run by qemu-user-static through binfmt_misc
    (registered with the F flag, so it works inside mmdebstrap's chroot). The machines here boot
    without binfmt_misc mounted; as root we mount it and enable Debian's qemu entry."""
    if OCI_ARCH[arch] == _host_debarch():
        return
    if subprocess.run(["arch-test", OCI_ARCH[arch]], capture_output=True).returncode == 0:
        return
    mnt = pathlib.Path("/proc/sys/fs/binfmt_misc")
    if not (mnt / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(mnt)], check=True)
    subprocess.run(["update-binfmts", "--enable", f"qemu-{arch}"], check=True,
                   capture_output=True)
    r = subprocess.run(["arch-test", OCI_ARCH[arch]], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"cannot run {arch} programs here ({r.stdout.strip()}): "
                           "qemu-user-static and binfmt_misc are needed to build its bases")


def _host_debarch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def base_key(arch: str, packages: tuple[str, ...]) -> str:
    h = hashlib.sha256(json.dumps([BUILDER_VERSION, SUITE, arch, sorted(set(packages))]).encode())
    return f"{arch}-{h.hexdigest()[:16]}"


# minbase without documentation: a smaller layer, a faster unpack
DPKG_EXCLUDES = ["path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
                 "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
                 "path-exclude=/usr/share/locale/*"]


def base_image(arch: str, packages: tuple[str, ...] | list[str] = ()) -> pathlib.Path:
    """An OCI layout (tag "latest") of Debian minbase plus `packages` for `arch`, built once with
    mmdebstrap and cached. Its config: PATH in Env, Cmd /bin/sh."""
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
    packages = tuple(packages)
    out = bases_dir() / base_key(arch, packages)
    if (out / "index.json").exists():
        return out
    bases_dir().mkdir(parents=True, exist_ok=True)
    with open(bases_dir() / f".{out.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # one build per base, even across processes
        if (out / "index.json").exists():
            return out
        ensure_binfmt(arch)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=bases_dir()))
        try:
            tarball = tmp / "rootfs.tar"
            cmd = ["mmdebstrap", "--quiet", "--mode=root", "--variant=minbase",
                   f"--architectures={OCI_ARCH[arch]}", "--format=tar",
                   *(f"--dpkgopt={o}" for o in DPKG_EXCLUDES)]
            if packages:
                cmd.append("--include=" + ",".join(packages))
            r = subprocess.run(cmd + [SUITE, str(tarball)], capture_output=True, text=True,
                               env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
            if r.returncode != 0:
                raise RuntimeError(f"mmdebstrap failed for {arch} {packages}: {r.stderr[-3000:]}")
            layer = _gzip_file(tarball)
            tarball.unlink()
            write_layout(tmp / "layout", [layer], arch, gzipped=True,
                         config={"Env": [PATH_ENV], "Cmd": ["/bin/sh"],
                                 "Labels": {"org.vmmd.base.packages": " ".join(packages)}})
            os.rename(tmp / "layout", out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _gzip_file(path: pathlib.Path) -> bytes:
    buf = io.BytesIO()
    with open(path, "rb") as f, gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6,
                                              mtime=0) as gz:
        shutil.copyfileobj(f, gz, 1 << 20)
    return buf.getvalue()
