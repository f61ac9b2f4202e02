"""Domain objects <-> protobuf messages."""
from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from ..v1 import host_pb2, images_pb2, microvms_pb2, types_pb2


def ts(t: float) -> Timestamp:
    out = Timestamp()
    out.FromNanoseconds(int(t * 1e9))
    return out


def dur(s: float) -> Duration:
    out = Duration()
    out.FromNanoseconds(int(s * 1e9))
    return out


def seconds(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9


def state_pb(name: str) -> int:
    return types_pb2.MicroVMState.Value(f"MICROVM_STATE_{name}") if name != "UNSPECIFIED" else 0


def state_name(value: int) -> str:
    return types_pb2.MicroVMState.Name(value).removeprefix("MICROVM_STATE_")


def microvm(s, has_agent: bool) -> microvms_pb2.MicroVM:
    p = s.policy
    idle = types_pb2.IdlePolicy(max_idle=dur(p["max_idle_s"]), auto_resume=p["auto_resume"],
                                suspended_retention=dur(p["retention_s"]))
    m = microvms_pb2.MicroVM(
        id=s.id, image_id=s.image_id, state=state_pb(s.state), vcpus=s.spec["vcpus"],
        memory_mib=s.spec["memory_mib"], disk_mib=s.spec["disk_mib"], idle=idle,
        max_runtime=dur(p["max_runtime_s"]), labels=s.spec.get("labels", {}),
        created_at=ts(s.created), state_since=ts(s.state_since),
        last_activity=ts(s.last_activity), running_time=dur(s.running_time()),
        reason=s.reason, suspends=s.suspends,
        # a SUSPENDED MicroVM's worker is on its way out: its state is on disk already
        worker_pid=s.worker_pid if s.state not in ("SUSPENDED", "TERMINATED") else 0,
        snapshot_depth=len(s.chain), has_agent=has_agent)
    if s.state == "SUSPENDED":
        m.expires_at.CopyFrom(ts(s.state_since + p["retention_s"]))
    n = s.spec.get("network")
    if n:
        live = s.net if s.state not in ("SUSPENDED", "TERMINATED") else None
        m.network.CopyFrom(microvms_pb2.NetworkInfo(
            mac=live["mac"] if live else "",
            egress=egress_pb(n["egress"]),
            ports=[microvms_pb2.PortForward(guest_port=g, host_port=h)
                   for g, h in (live or {}).get("forwards", [])] or
                  [microvms_pb2.PortForward(guest_port=g) for g in n["expose"]]))
    return m


def egress_pb(d: dict) -> microvms_pb2.EgressPolicy:
    return microvms_pb2.EgressPolicy(deny_by_default=d["default"] == "deny", allow=d["allow"],
                                     deny=d["deny"], no_dns=not d["dns"])


def egress_dict(e: microvms_pb2.EgressPolicy) -> dict:
    return {"default": "deny" if e.deny_by_default else "allow", "allow": list(e.allow),
            "deny": list(e.deny), "dns": not e.no_dns}


def image(img: dict, users: int) -> images_pb2.Image:
    meta = img["meta"]
    agent = meta.get("agent", {})
    return images_pb2.Image(
        id=img["id"], name=img["name"], digest=img["digest"], vcpus=meta["vcpus"],
        memory_mib=meta["memory_mib"], size_bytes=meta.get("size_bytes", 0),
        devices=images_pb2.DeviceConfig(**meta.get("devices", {})),
        agent=images_pb2.GuestAgent(
            present=bool(agent.get("present")), vsock_port=agent.get("vsock_port", 0),
            hooks=[hook_pb(h) for h in agent.get("hooks", [])]),
        labels=meta.get("labels", {}), created_at=ts(img["created"]), microvms=users,
        kernel=meta.get("kernel", ""), initrd=meta.get("initrd", ""),
        rootfs=meta.get("rootfs", ""), working_set=bool(meta.get("working_set")),
        source=meta.get("source", ""), arch=meta.get("arch", ""),
        config=image_config(meta.get("config") or {}))


def image_config(c: dict) -> images_pb2.ImageConfig:
    return images_pb2.ImageConfig(
        env=c.get("env", {}), workdir=c.get("workdir", ""), user=c.get("user", ""),
        entrypoint=c.get("entrypoint", []), cmd=c.get("cmd", []),
        exposed_ports=c.get("exposed_ports", []), build_digest=c.get("digest", ""),
        base_digest=c.get("base_digest", ""))


HOOK_EVENTS = {"run": 1, "suspend": 2, "resume": 3, "terminate": 4}


def hook_pb(h: dict) -> images_pb2.LifecycleHook:
    out = images_pb2.LifecycleHook(event=HOOK_EVENTS.get(h.get("event"), 0),
                                   timeout_ms=h.get("timeout_ms", 0))
    if "argv" in h:
        out.command.argv.extend(h["argv"])
    elif "http_port" in h:
        out.http.port = h["http_port"]
        out.http.path = h.get("http_path", "/")
        out.http.method = h.get("http_method", "POST")
    return out


def hook_dict(h: images_pb2.LifecycleHook) -> dict:
    inv = {v: k for k, v in HOOK_EVENTS.items()}
    d = {"event": inv.get(h.event, ""), "timeout_ms": h.timeout_ms or 5000}
    if h.HasField("command"):
        d["argv"] = list(h.command.argv)
    elif h.HasField("http"):
        d.update(http_port=h.http.port, http_path=h.http.path or "/",
                 http_method=h.http.method or "POST")
    return d


def agent_dict(a: images_pb2.GuestAgent) -> dict:
    return {"present": a.present, "vsock_port": a.vsock_port or 1024,
            "hooks": [hook_dict(h) for h in a.hooks]}


def event(ev: dict) -> types_pb2.Event:
    return types_pb2.Event(
        seq=ev["seq"], microvm_id=ev["vm_id"], time=ts(ev["ts"]),
        type=types_pb2.EventType.Value(f"EVENT_TYPE_{ev['type']}"),
        from_state=state_pb(ev["from_state"]), to_state=state_pb(ev["to_state"]),
        reason=ev["reason"], exit_code=ev.get("exit_code", 0), labels=ev.get("labels", {}))


def resources(t) -> types_pb2.Resources:
    return types_pb2.Resources(vcpus=t[0], memory_mib=t[1], disk_mib=t[2])


def host(h: dict) -> host_pb2.HostInfo:
    return host_pb2.HostInfo(
        hostname=h["hostname"], arch=h["arch"], cpu_model=h["cpu_model"],
        cpu_flags=h["cpu_flags"], kernel=h["kernel"], daemon_version=h["daemon_version"],
        native_version=h["native_version"], capacity=resources(h["capacity"]),
        vcpu_overcommit=h["vcpu_overcommit"], memory_overcommit=h["memory_overcommit"],
        allocatable=resources(h["allocatable"]), committed=resources(h["committed"]),
        used=resources(h["used"]), free=resources(h["free"]),
        microvms_by_state=h["by_state"], cached_images=h["images"],
        cgroup_version=h["cgroup_version"], draining=h["draining"],
        restore_backend=h["restore_backend"])
