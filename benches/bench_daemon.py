"""The daemon under a scheduler's load, and the issue's ratios (same-run baselines).

As a script (drives any running daemon, or one it starts itself):
    python benches/bench_daemon.py run [--socket S --image ID | --spawn] --sweep 1,2,4,8 \
        --cycles 3 --out result.json --plot result.png
    python benches/bench_daemon.py compare before.json after.json
Each of N concurrent sessions does, `cycles` times: Launch -> Ping (the exec of agent images,
once they exist) -> Suspend -> Ping (auto-resume from SUSPENDED) -> Terminate. The result holds
p50/p90/p99 per operation and N; the plot shows latency against concurrency.

Under pytest (`./scripts/test.sh benches/bench_daemon.py -s`): a small sweep, Launch RPC ->
RUNNING against a native restore of the same snapshot in this process, and suspend/resume time
against the guest's dirty memory.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

OPS = ("launch", "ping", "suspend", "resume_by_ping", "terminate")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return 0.0
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


def stubs(socket: str):
    import grpc

    from vmmd.v1 import host_pb2_grpc, microvms_pb2_grpc
    ch = grpc.insecure_channel(socket if ":" in socket and not socket.startswith("/")
                               else f"unix:{socket}")
    return ch, microvms_pb2_grpc.MicroVMServiceStub(ch), host_pb2_grpc.HostServiceStub(ch)


def session(vms, image: str, cycles: int, out: dict, errors: list) -> None:
    from vmmd.v1 import microvms_pb2 as mpb
    for _ in range(cycles):
        try:
            t = time.perf_counter()
            vm = vms.Launch(mpb.LaunchRequest(image_id=image))
            out["launch"].append(time.perf_counter() - t)
            for op, call in (("ping", lambda: vms.Ping(mpb.PingRequest(microvm_id=vm.id))),
                             ("suspend", lambda: vms.Suspend(mpb.SuspendRequest(microvm_id=vm.id))),
                             ("resume_by_ping", lambda: vms.Ping(mpb.PingRequest(microvm_id=vm.id))),
                             ("terminate", lambda: vms.Terminate(mpb.TerminateRequest(microvm_id=vm.id)))):
                t = time.perf_counter()
                call()
                out[op].append(time.perf_counter() - t)
        except Exception as e:  # counted and reported; a sweep goes on
            errors.append(str(e)[:200])


def sweep(socket: str, image: str, ns: list[int], cycles: int) -> dict:
    ch, vms, _ = stubs(socket)
    result = {"meta": {"time": time.time(), "cycles": cycles, "socket": socket, "image": image,
                       "host": os.uname().nodename, "cpus": os.cpu_count()}, "sweep": {}}
    for n in ns:
        lat = {op: [] for op in OPS}
        errors: list[str] = []
        threads = [threading.Thread(target=session, args=(vms, image, cycles, lat, errors))
                   for _ in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        result["sweep"][str(n)] = {
            "wall_s": wall, "errors": errors, "sessions_per_s": n * cycles / wall,
            "ops": {op: {"n": len(v), "p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99)}
                    for op, v in lat.items()}}
    ch.close()
    return result


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ns = sorted(int(n) for n in result["sweep"])
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, op in enumerate(OPS):
        p50 = [result["sweep"][str(n)]["ops"][op]["p50"] * 1e3 for n in ns]
        p99 = [result["sweep"][str(n)]["ops"][op]["p99"] * 1e3 for n in ns]
        line, = ax.plot(ns, p50, marker="o", label=f"{op} p50")
        ax.plot(ns, p99, linestyle="--", color=line.get_color(), label=f"{op} p99")
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("latency (ms)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_title("vmmd: operation latency against concurrency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(a: dict, b: dict) -> list[str]:
    lines = [f"{'N':>4} {'op':16} {'p50 a ms':>10} {'p50 b ms':>10} {'b/a':>6} "
             f"{'p99 a ms':>10} {'p99 b ms':>10} {'b/a':>6}"]
    for n in sorted(set(a["sweep"]) & set(b["sweep"]), key=int):
        for op in OPS:
            x, y = a["sweep"][n]["ops"][op], b["sweep"][n]["ops"][op]
            r50 = y["p50"] / x["p50"] if x["p50"] else float("nan")
            r99 = y["p99"] / x["p99"] if x["p99"] else float("nan")
            lines.append(f"{n:>4} {op:16} {x['p50'] * 1e3:10.2f} {y['p50'] * 1e3:10.2f} {r50:6.2f} "
                         f"{x['p99'] * 1e3:10.2f} {y['p99'] * 1e3:10.2f} {r99:6.2f}")
    return lines


def spawn_daemon(tmp: str, **settings):
    """A daemon of its own with a counter-guest image, for self-contained runs."""
    from daemon.conftest import Daemon, make_snapshot
    snap = make_snapshot(os.path.join(tmp, "counter"), pages=64)
    d = Daemon(os.path.join(tmp, "state"), os.path.join(tmp, "vmmd.log"),
               dict({"min_idle_s": 1.0, "log_level": "warning"}, **settings)).start()
    return d, d.register(snap).id


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--socket", default="/var/lib/vmmd/vmmd.sock")
    r.add_argument("--image")
    r.add_argument("--spawn", action="store_true", help="start a daemon of its own")
    r.add_argument("--sweep", default="1,2,4,8")
    r.add_argument("--cycles", type=int, default=3)
    r.add_argument("--out", default="bench_daemon.json")
    r.add_argument("--plot", default="")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args(argv)
    if args.cmd == "compare":
        with open(args.a) as fa, open(args.b) as fb:
            print("\n".join(compare(json.load(fa), json.load(fb))))
        return 0
    ns = [int(x) for x in args.sweep.split(",")]
    d = None
    tmp = tempfile.mkdtemp(prefix="vmmd-bench-")
    try:
        if args.spawn:
            d, image = spawn_daemon(tmp)
            socket = d.sock
        else:
            if not args.image:
                ap.error("--image is needed unless --spawn")
            socket, image = args.socket, args.image
        res = sweep(socket, image, ns, args.cycles)
    finally:
        if d is not None:
            d.cleanup()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    if args.plot:
        plot(res, args.plot)
    for n, v in res["sweep"].items():
        print(f"N={n:>3} " + "  ".join(f"{op} {o['p50'] * 1e3:.1f}/{o['p99'] * 1e3:.1f} ms"
                                       for op, o in v["ops"].items())
              + (f"  errors {len(v['errors'])}" if v["errors"] else ""))
    return 0


# ------------------------------------------------------------------ pytest (benches/)

if "pytest" in sys.modules:          # collected by pytest, not run as a script
    import pytest

    from conftest import report

    @pytest.fixture(scope="module")
    def bench_daemon(tmp_path_factory):
        d, image = spawn_daemon(str(tmp_path_factory.mktemp("daemon")))
        yield d, image
        d.cleanup()

    def test_scheduler_sweep(bench_daemon, tmp_path):
        d, image = bench_daemon
        res = sweep(d.sock, image, [1, 2, 4], cycles=2)
        assert not any(v["errors"] for v in res["sweep"].values()), res
        out = os.environ.get("VMMD_BENCH_OUT", str(tmp_path))
        with open(os.path.join(out, "bench_daemon.json"), "w") as f:
            json.dump(res, f, indent=1)
        plot(res, os.path.join(out, "bench_daemon.png"))
        s = res["sweep"]
        for op in OPS:
            report("daemon sweep", f"{op} p50 ms at N=1", s["1"]["ops"][op]["p50"] * 1e3)
            report("daemon sweep", f"{op} p50 N=4 / N=1",
                   s["4"]["ops"][op]["p50"] / s["1"]["ops"][op]["p50"], "2 cores")

    def test_launch_rpc_against_native_restore(bench_daemon, tmp_path):
        """Launch RPC -> RUNNING vs the native restore + start of the same snapshot here."""
        from vmmd.native import VM, Backend
        from vmmd.v1 import host_pb2
        from vmmd.v1 import microvms_pb2 as mpb
        d, image = bench_daemon
        snap = os.path.join(d.state_dir, "images", image, "snapshot")
        native, launch, rtt = [], [], []
        for _ in range(10):
            t = time.perf_counter()
            vm = VM.restore(snap, Backend.MMAP, track_dirty=True)
            vm.start()
            native.append(time.perf_counter() - t)
            vm.close()
            t = time.perf_counter()
            d.host.GetHostInfo(host_pb2.GetHostInfoRequest())
            rtt.append(time.perf_counter() - t)
            t = time.perf_counter()
            v = d.launch(image)
            launch.append(time.perf_counter() - t)
            d.vms.Terminate(mpb.TerminateRequest(microvm_id=v.id))
        m = statistics.median
        report("daemon launch", "Launch RPC ms / native restore ms",
               m(launch) * 1e3, f"native {m(native) * 1e3:.2f} ms, RPC {m(rtt) * 1e3:.2f} ms")
        report("daemon launch", "(Launch - RPC round trip) / native restore",
               (m(launch) - m(rtt)) / m(native), "target <= 2")

    def test_suspend_and_resume_follow_dirty_memory(tmp_path):
        """Suspend writes the pages dirtied since the last snapshot: its time follows them,
        not the 512 MiB the guest has."""
        from daemon.conftest import Daemon, make_snapshot
        from vmmd.v1 import microvms_pb2 as mpb
        sizes = {"64 KiB": 16, "16 MiB": 4096, "128 MiB": 32767}
        d = Daemon(tmp_path / "state", tmp_path / "vmmd.log", {"min_idle_s": 1.0}).start()
        try:
            got = {}
            for label, pages in sizes.items():
                img = d.register(make_snapshot(tmp_path / f"s{pages}", mem_mib=512,
                                               pages=pages)).id
                sus, res = [], []
                for _ in range(3):
                    vm = d.launch(img)
                    time.sleep(0.3)           # the counter guest dirties all its pages
                    t = time.perf_counter()
                    s = d.vms.Suspend(mpb.SuspendRequest(microvm_id=vm.id))
                    sus.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    d.vms.Resume(mpb.ResumeRequest(microvm_id=vm.id))
                    res.append(time.perf_counter() - t)
                    d.vms.Terminate(mpb.TerminateRequest(microvm_id=vm.id))
                    assert s.snapshot_depth == 1
                got[label] = (statistics.median(sus), statistics.median(res))
                report("daemon suspend", f"suspend ms, {label} dirty of 512 MiB",
                       got[label][0] * 1e3)
                report("daemon suspend", f"resume ms, {label} dirty of 512 MiB",
                       got[label][1] * 1e3)
            report("daemon suspend", "suspend 128 MiB dirty / 64 KiB dirty",
                   got["128 MiB"][0] / got["64 KiB"][0], "grows with dirty pages")
            report("daemon suspend", "suspend 64 KiB dirty / resume",
                   got["64 KiB"][0] / got["64 KiB"][1])
        finally:
            d.cleanup()


if __name__ == "__main__":
    sys.exit(main())
