"""A minimal root filesystem for Linux MicroVMs until images are built from Dockerfiles: busybox
on ext4, made with `mke2fs -d` (no root, no loop device), on the machine that runs vmmd."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile


def busybox_rootfs(busybox: pathlib.Path, out: pathlib.Path, size_mb: int = 64) -> pathlib.Path:
    """An ext4 image holding busybox with a link per applet, /etc/passwd and the usual dirs."""
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        for d in ("bin", "etc", "proc", "sys", "dev", "run", "tmp", "root", "data"):
            (root / d).mkdir()
        shutil.copy(busybox, root / "bin" / "busybox")
        os.chmod(root / "bin" / "busybox", 0o755)
        # the applet list is the same for the amd64 and arm64 builds of one busybox version
        amd64 = busybox.parents[2] / "busybox-amd64" / "bin" / "busybox"
        applets = subprocess.run([str(amd64), "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for a in applets:
            if a != "busybox":
                os.symlink("busybox", root / "bin" / a)
        (root / "etc" / "passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        (root / "etc" / "group").write_text("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n")
        (root / "data" / "hello.txt").write_text("from the image\n")
        os.chmod(root / "tmp", 0o1777)
        out.unlink(missing_ok=True)
        subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(root), "-L", "vmmd-root",
                        str(out), f"{size_mb}M"], check=True, capture_output=True)
    return out
