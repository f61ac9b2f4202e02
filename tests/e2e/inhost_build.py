"""Runs INSIDE an emulated KVM host (tests/e2e/test_build.py starts it there): builds a Flask
app's image from a Dockerfile and a zip with vmmd.images.build (its base pulled from Debian's
docker-registry on this host's loopback, RUN steps in a build MicroVM), launches two sessions
from the image's snapshot and sends each an HTTP request through its NIC; rebuilds unchanged
(no RUN runs) and with one copied file changed (only the steps from that COPY run); and feeds
it bad input. Prints `CHECK <name> <value>` and `TIME <name> <seconds>` lines.

Argv: kernel initrd base-layout arch.
"""
from __future__ import annotations

import asyncio
import io
import os
import shutil
import sys
import tarfile
import time
import urllib.request
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from images_support import push, registry  # noqa: E402
from vmmd.errors import InvalidArgument  # noqa: E402
from vmmd.images.build import Builder, BuildSpec  # noqa: E402
from vmmd.microvm import LinuxSpec, MicroVM, NetOptions  # noqa: E402
from vmmd.native import Backend  # noqa: E402
from vmmd.net import EgressPolicy  # noqa: E402

WORK = "/tmp/build-e2e"
APP = """from flask import Flask
import os
app = Flask(__name__)

@app.route("/")
def hello():
    return f"{os.environ.get('GREETING', '?')} from app v1 with flask {VERSION} ({MOTD})\\n"

VERSION = open("/app/flask-version").read().strip()
MOTD = open("/app/assets/motd.txt").read().strip()
if __name__ == "__main__":
    app.run(host="0.0.0.0", port=8000)
"""
DOCKERFILE = """FROM {base}
ARG GREETING=hello
ENV GREETING=$GREETING
WORKDIR /app
RUN python3 -c "import flask; print(flask.__version__)" > /app/flask-version
ADD assets.tar.gz assets/
COPY app.py .
RUN python3 -m py_compile app.py && echo compiled
EXPOSE 8000
CMD ["python3", "app.py"]
"""


def tarred(members: dict[str, bytes]) -> bytes:
    """A .tar.gz for ADD: name -> bytes, owned by uid 1234."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.mode = len(data), 1234, 0o640
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


ASSETS = tarred({"motd.txt": b"unpacked from assets.tar.gz\n"})
FILES = {"app.py": APP, "assets.tar.gz": ASSETS}


def check(name: str, value) -> None:
    print(f"CHECK {name} {value}", flush=True)


def timing(name: str, seconds: float) -> None:
    print(f"TIME {name} {seconds:.2f}", flush=True)


def zipped(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


class Recorder:
    def __init__(self):
        self.events: list[dict] = []

    def __call__(self, ev: dict) -> None:
        self.events.append(ev)
        print(f"  [{ev.get('step')}] {ev.get('log', '')}"
              f"{' (cached)' if ev.get('cached') else ''}", flush=True)

    def ran(self, kind: str) -> int:
        """How many steps of `kind` actually ran (not taken from the cache)."""
        return sum(1 for e in self.events if "/" in str(e.get("step")) and not e.get("cached")
                   and str(e.get("log", "")).startswith(kind + " "))


async def build(base: str, app: str, out: str, arch: str, kernel: str, initrd: str,
                dockerfile: str = DOCKERFILE, files: dict | None = None) -> tuple:
    rec = Recorder()
    b = Builder(f"{WORK}/cache", f"{WORK}/work", rec, kernel=kernel, initrd=initrd)
    spec = BuildSpec(dockerfile.format(base=base), zipped(files or {**FILES, "app.py": app}),
                     arch=arch, mem_mib=256, disk_bytes=2 << 30, ready_timeout=240,
                     run_timeout=240)   # a hang is reported well inside the host's time
    t0 = time.monotonic()
    res = await b.build(spec, out)
    return res, rec, time.monotonic() - t0


async def session(res, arch: str, kernel: str, initrd: str, name: str,
                  backend: Backend = Backend.MMAP, working_set=None) -> tuple[str, float, dict]:
    """A session launched from the built image: the app's first HTTP answer, the seconds from
    launch to it, and the VMM's counters then (benches/inhost_build_bench.py uses it too)."""
    spec = LinuxSpec(arch, kernel, initrd, str(res.rootfs), mem_mib=256, net=True)
    t0 = time.monotonic()
    vm = MicroVM.restore(res.snapshot, spec, f"{WORK}/{name}", backend=backend,
                         network=NetOptions(EgressPolicy(), expose=(8000,)),
                         working_set=working_set)
    try:
        await vm.wait_ready(120)
        await vm.after_restore()
        url = f"http://127.0.0.1:{vm.host_port(8000)}/"
        while True:
            try:
                body = await asyncio.to_thread(
                    lambda: urllib.request.urlopen(url, timeout=30).read().decode())
                break
            except OSError:
                if time.monotonic() - t0 > 120:
                    raise
                await asyncio.sleep(0.05)
        return body.strip(), time.monotonic() - t0, vm.vm.stats()
    finally:
        vm.close()


async def bad(base: str, arch: str, kernel: str, initrd: str) -> None:
    cases = {
        "unknown_instruction": (DOCKERFILE + "VOLUME /data\n", FILES),
        "copy_missing": (DOCKERFILE.replace("COPY app.py .", "COPY missing.py ."), FILES),
        "failing_run": (DOCKERFILE.replace("&& echo compiled", "&& echo about to fail && false"),
                        FILES),
        "add_archive_escape": (DOCKERFILE, {**FILES, "assets.tar.gz": tarred(
            {"motd.txt": b"x", "../../etc/cron.d/evil": b"x"})}),
    }
    for name, (df, files) in cases.items():
        out = f"{WORK}/bad-{name}"
        try:
            await build(base, APP, out, arch, kernel, initrd, df, files)
            check(f"bad_{name}", "accepted")
        except InvalidArgument as e:
            msg = str(e).replace("\n", " | ")
            check(f"bad_{name}", f"refused:{not os.path.exists(out)}:{msg[:300]}")
    try:
        rec = Recorder()
        b = Builder(f"{WORK}/cache", f"{WORK}/work", rec, kernel=kernel, initrd=initrd)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("../evil.py", "x")
        await b.build(BuildSpec(DOCKERFILE.format(base=base), buf.getvalue(), arch=arch),
                      f"{WORK}/bad-zip")
        check("bad_zip_slip", "accepted")
    except InvalidArgument as e:
        check("bad_zip_slip", f"refused:{not os.path.exists(f'{WORK}/bad-zip')}:"
              f"{str(e)[:200]}")


async def main() -> None:
    kernel, initrd, layout, arch = sys.argv[1:5]
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    with registry() as reg:
        base = reg.ref("flask-base:latest")
        push(layout, base, "latest")
        res, rec, took = await build(base, APP, f"{WORK}/image1", arch, kernel, initrd)
        timing("build_first", took)
        for k, v in res.timings.items():
            timing(f"build_{k}", v)
        check("first_build_ran_runs", rec.ran("RUN"))
        bodies, launch = [], []
        for i in range(2):
            body, t, _ = await session(res, arch, kernel, initrd, f"s{i}")
            bodies.append(body)
            launch.append(t)
            timing(f"launch_to_http_{i}", t)
        check("sessions_answer", all(b.startswith("hello from app v1 with flask") for b in bodies))
        check("add_archive_unpacked", all("(unpacked from assets.tar.gz)" in b for b in bodies))
        cold = res.timings.get("init_boot_s", 0) + res.timings.get("app_ready_s", 0)
        timing("cold_boot_plus_app_ready", cold)
        check("working_set", res.working_set is not None and res.working_set.exists())
        res2, rec2, took = await build(base, APP, f"{WORK}/image2", arch, kernel, initrd)
        timing("build_unchanged", took)
        check("unchanged_rebuild_ran_runs", rec2.ran("RUN"))
        check("unchanged_same_digest", res2.digest == res.digest)
        res3, rec3, took = await build(base, APP.replace("app v1", "app v2"),
                                       f"{WORK}/image3", arch, kernel, initrd)
        timing("build_one_file_changed", took)
        check("changed_rebuild_ran", f"RUN={rec3.ran('RUN')},COPY={rec3.ran('COPY')}")
        body, _, _ = await session(res3, arch, kernel, initrd, "s3")
        check("changed_app_answers", body.startswith("hello from app v2"))
        await bad(base, arch, kernel, initrd)
    check("done", True)


if __name__ == "__main__":
    asyncio.run(main())
