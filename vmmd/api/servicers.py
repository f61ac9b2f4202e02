"""Thin servicers: parse the request, await the session manager, build the reply. Errors are
domain exceptions, mapped to status codes by vmmd/api/server.py."""
from __future__ import annotations

import asyncio
import dataclasses
import time

from ..errors import (FailedPrecondition, InvalidArgument, NotFound, Unavailable)
from ..limits import MAX_NAME, check_labels, validate_launch
from ..sessions import STATES, Manager
from ..v1 import images_pb2, microvms_pb2
from . import agent_bridge
from . import convert as cv

MAX_ARGV = 4096
MAX_ARGV_BYTES = 256 << 10
MAX_PATH = 4096


def _id(value: str, what: str = "microvm_id") -> str:
    if not value:
        raise InvalidArgument(f"{what} is empty: name a MicroVM from List")
    if len(value) > 128:
        raise InvalidArgument(f"{what} is {len(value)} characters; ids are at most 128")
    return value


def _path(p: str) -> str:
    if not p or not p.startswith("/") or len(p) > MAX_PATH or "\0" in p:
        raise InvalidArgument(f"path {p[:80]!r}: give an absolute guest path under {MAX_PATH} bytes")
    return p


class ImageService:
    def __init__(self, m: Manager):
        self.m = m

    def _pb(self, img):
        return cv.image(img, len(self.m.image_users(img["id"])))

    async def RegisterImage(self, req: images_pb2.RegisterImageRequest, ctx):
        if len(req.name) > MAX_NAME:
            raise InvalidArgument(f"name of {len(req.name)} characters: at most {MAX_NAME}")
        check_labels(dict(req.labels))
        which = req.WhichOneof("source")
        if which == "snapshot":
            src = req.snapshot
            d = {"snapshot_dir": src.snapshot_dir, "kernel": src.kernel, "initrd": src.initrd,
                 "rootfs": src.rootfs, "working_set": src.working_set,
                 "devices": {k: True for k in ("debug", "linux", "net")
                             if getattr(src.devices, k)},
                 "agent": cv.agent_dict(src.agent) if src.agent.present else {}}
            img = await self.m.register_image_from_dir(req.name, d, dict(req.labels))
        elif which == "microvm":
            agent = cv.agent_dict(req.microvm.agent) if req.microvm.HasField("agent") else None
            img = await self.m.register_image_from_vm(
                req.name, _id(req.microvm.microvm_id, "microvm.microvm_id"), agent,
                dict(req.labels))
        else:
            raise InvalidArgument("no source: set snapshot (a snapshot directory on this host) "
                                  "or microvm (a running MicroVM's id)")
        return self._pb(img)

    async def GetImage(self, req, ctx):
        return self._pb(self.m.get_image(_id(req.image_id, "image_id")))

    async def ListImages(self, req, ctx):
        want = dict(req.labels)
        imgs = [i for i in self.m.images.values()
                if all(i["meta"].get("labels", {}).get(k) == v for k, v in want.items())]
        return images_pb2.ListImagesResponse(images=[self._pb(i) for i in imgs])

    async def DeleteImage(self, req, ctx):
        n = await self.m.delete_image(_id(req.image_id, "image_id"), req.force)
        return images_pb2.DeleteImageResponse(image_id=req.image_id, terminated_microvms=n)

    async def BuildImage(self, req, ctx):
        if len(req.name) > MAX_NAME:
            raise InvalidArgument(f"name of {len(req.name)} characters: at most {MAX_NAME}")
        if req.context_path:
            if not req.context_path.startswith("/"):
                raise InvalidArgument(f"context_path {req.context_path[:80]!r}: give an absolute "
                                      "path on the daemon's host")
            try:
                with open(req.context_path, "rb") as f:
                    context = f.read((1 << 30) + 1)
            except OSError as e:
                raise InvalidArgument(f"context_path {req.context_path}: {e.strerror}") from None
        else:
            context = req.context_zip
        q: asyncio.Queue = asyncio.Queue()

        async def progress(ev: dict) -> None:
            await q.put(images_pb2.BuildImageProgress(
                step=str(ev.get("step", "")), log=str(ev.get("log", ""))[:4096],
                cached=bool(ev.get("cached")), seconds=float(ev.get("seconds") or 0)))
        task = asyncio.get_running_loop().create_task(self.m.build_image(
            req.name, req.dockerfile, context, dict(req.build_args), dict(req.labels), progress))
        try:
            while not (task.done() and q.empty()):
                getter = asyncio.ensure_future(q.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                else:
                    getter.cancel()
            img = task.result()
            yield images_pb2.BuildImageProgress(step="done", log=f"image {img['id']}",
                                                image=self._pb(img))
        finally:
            if not task.done():
                task.cancel()


class MicroVMService:
    def __init__(self, m: Manager):
        self.m = m

    def _pb(self, s):
        return cv.microvm(s, self.m.has_agent(s))

    async def Launch(self, req: microvms_pb2.LaunchRequest, ctx):
        img = self.m.get_image(_id(req.image_id, "image_id"))
        idle = req.idle
        spec = validate_launch(
            self.m.cfg, image_id=img["id"], image_vcpus=img["meta"]["vcpus"],
            image_memory_mib=img["meta"]["memory_mib"], vcpus=req.vcpus,
            memory_mib=req.memory_mib, disk_mib=req.disk_mib,
            max_idle_s=cv.seconds(idle.max_idle) if idle.HasField("max_idle") else None,
            auto_resume=idle.auto_resume if idle.HasField("auto_resume") else None,
            retention_s=(cv.seconds(idle.suspended_retention)
                         if idle.HasField("suspended_retention") else None),
            max_runtime_s=cv.seconds(req.max_runtime) if req.HasField("max_runtime") else None,
            env=dict(req.env), labels=dict(req.labels))
        if req.HasField("network"):
            spec = dataclasses.replace(spec, network={
                "egress": cv.egress_dict(req.network.egress),
                "expose": list(req.network.expose_ports)})
        if len(req.request_id) > 128:
            raise InvalidArgument("request_id is over 128 characters")
        return self._pb(await self.m.launch(spec, req.request_id))

    async def SetEgress(self, req, ctx):
        return self._pb(await self.m.set_egress(_id(req.microvm_id), cv.egress_dict(req.egress)))

    async def Get(self, req, ctx):
        return self._pb(self.m.get(_id(req.microvm_id)))

    async def List(self, req, ctx):
        check_labels(dict(req.labels))
        states = [cv.state_name(x) for x in req.states]
        for st in states:
            if st not in STATES:
                raise InvalidArgument(f"state {st}: use one of {', '.join(STATES)}")
        return microvms_pb2.ListResponse(microvms=[
            self._pb(s) for s in self.m.list(dict(req.labels), states, req.include_terminated)])

    async def Pause(self, req, ctx):
        return self._pb(await self.m.pause(_id(req.microvm_id)))

    async def Suspend(self, req, ctx):
        return self._pb(await self.m.suspend(_id(req.microvm_id)))

    async def Resume(self, req, ctx):
        return self._pb(await self.m.resume(_id(req.microvm_id)))

    async def Terminate(self, req, ctx):
        if len(req.reason) > 1024:
            raise InvalidArgument("reason is over 1024 characters")
        return self._pb(await self.m.terminate(_id(req.microvm_id),
                                               req.reason or "terminated by request"))

    async def Ping(self, req, ctx):
        vm_id = _id(req.microvm_id)
        was = self.m.get(vm_id).state
        s, stats = await self.m.ping(vm_id)
        counters = {k: int(v) for k, v in stats.items() if isinstance(v, int) and v >= 0}
        return microvms_pb2.PingResponse(microvm=self._pb(s), counters=counters,
                                         resumed=was == "SUSPENDED")

    # --- data plane: through the guest agent ---

    async def _agent(self, vm_id: str):
        s = await self.m.touch(_id(vm_id), data_plane=True)
        img = self.m.get_image(s.image_id)
        return s, await agent_bridge.connect(self.m.agent_socket(s), img["meta"]["agent"])

    async def Exec(self, req_iter, ctx):
        first = await anext(req_iter, None)
        if first is None or first.WhichOneof("msg") != "start":
            raise InvalidArgument("the first ExecRequest must be start (microvm_id, argv)")
        st = first.start
        if not st.argv:
            raise InvalidArgument("start.argv is empty: give the program and its arguments")
        if len(st.argv) > MAX_ARGV or sum(len(a) for a in st.argv) > MAX_ARGV_BYTES:
            raise InvalidArgument(f"argv too large: at most {MAX_ARGV} arguments and "
                                  f"{MAX_ARGV_BYTES} bytes")
        s, client = await self._agent(st.microvm_id)
        env = dict(s.spec.get("env", {}), **dict(st.env))
        async with agent_bridge.errors_mapped():
            proc = await client.exec(list(st.argv), env=env, cwd=st.cwd or None,
                                     user=st.user or None, tty=st.tty,
                                     rows=st.size.rows, cols=st.size.cols)

        async def pump_in():
            async for m in req_iter:
                s.last_activity = time.time()
                kind = m.WhichOneof("msg")
                if kind == "stdin":
                    await proc.write_stdin(m.stdin)
                elif kind == "close_stdin":
                    await proc.close_stdin()
                elif kind == "resize":
                    await proc.resize(m.resize.rows, m.resize.cols)
                elif kind == "signal":
                    await proc.signal(m.signal)
        pump = asyncio.get_running_loop().create_task(pump_in())
        try:
            async with agent_bridge.errors_mapped():
                async for kind, data in proc.output():
                    if kind == "stdout":
                        yield microvms_pb2.ExecResponse(stdout=data)
                    elif kind == "stderr":
                        yield microvms_pb2.ExecResponse(stderr=data)
                    elif kind == "exit":
                        yield microvms_pb2.ExecResponse(exit=microvms_pb2.ExitStatus(
                            code=data[0], signal=data[1]))
                        break
        finally:
            pump.cancel()
            await proc.proc.kill()     # a caller that went away: its process goes too
            await client.close()

    async def ReadFile(self, req, ctx):
        path = _path(req.path)
        s, client = await self._agent(req.microvm_id)
        offset = req.offset
        try:
            async with agent_bridge.errors_mapped():
                async for chunk in client.read_file(path, offset=req.offset, length=req.length):
                    yield microvms_pb2.FileChunk(data=chunk, offset=offset)
                    offset += len(chunk)
        finally:
            await client.close()

    async def WriteFile(self, req_iter, ctx):
        first = await anext(req_iter, None)
        if first is None or first.WhichOneof("msg") != "start":
            raise InvalidArgument("the first WriteFileRequest must be start (microvm_id, path)")
        st = first.start
        path = _path(st.path)
        s, client = await self._agent(st.microvm_id)

        async def chunks():
            async for m in req_iter:
                if m.WhichOneof("msg") != "data":
                    raise InvalidArgument("after start, WriteFileRequest carries only data")
                yield m.data
        try:
            async with agent_bridge.errors_mapped():
                n = await client.write_file(path, chunks(), mode=st.mode or 0o644, append=st.append,
                                            make_parents=st.make_parents)
        finally:
            await client.close()
        return microvms_pb2.WriteFileResponse(bytes_written=n)

    async def Connect(self, req_iter, ctx):
        first = await anext(req_iter, None)
        if first is None or first.WhichOneof("msg") != "start":
            raise InvalidArgument("the first ConnectRequest must be start (microvm_id, port)")
        if not 0 < first.start.port < 65536:
            raise InvalidArgument(f"port {first.start.port}: use 1..65535")
        client = None
        if first.start.network:
            s, host_port = await self.m.network_port(_id(first.start.microvm_id), first.start.port)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", host_port)
            except OSError as e:
                raise Unavailable(f"guest port {first.start.port} through the network: {e}; "
                                  "is the guest listening on it?") from None
        else:
            s, client = await self._agent(first.start.microvm_id)
            async with agent_bridge.errors_mapped():
                reader, writer = await client.port_forward(first.start.port)

        async def pump_in():
            async for m in req_iter:
                kind = m.WhichOneof("msg")
                if kind == "data":
                    writer.write(m.data)
                    await writer.drain()
                elif kind == "close_write":
                    writer.write_eof()
        pump = asyncio.get_running_loop().create_task(pump_in())
        try:
            while data := await reader.read(65536):
                s.last_activity = time.time()
                yield microvms_pb2.ConnectResponse(data=data)
        finally:
            pump.cancel()
            writer.close()
            if client is not None:
                await client.close()

    async def WatchEvents(self, req, ctx):
        vm_id = req.microvm_id
        if vm_id and vm_id not in self.m.sessions:
            raise NotFound(f"MicroVM {vm_id!r} does not exist on this host; List shows the "
                           "MicroVMs it has, or leave microvm_id empty to watch all")
        want = dict(req.labels)

        def match(ev):
            return ((not vm_id or ev["vm_id"] == vm_id) and
                    all(ev.get("labels", {}).get(k) == v for k, v in want.items()))

        q = self.m.subscribe()
        try:
            last = 0
            if req.replay or req.since_seq:
                for ev in self.m.store.events_since(req.since_seq, vm_id):
                    s = self.m.sessions.get(ev["vm_id"])
                    ev["labels"] = s.spec.get("labels", {}) if s else {}
                    last = ev["seq"]
                    if match(ev):
                        yield cv.event(ev)
            while True:
                ev = await q.get()
                if ev == "drain":
                    raise Unavailable("vmmd is stopping; watch again (with since_seq) once it "
                                      "is back")
                if ev is None:
                    raise FailedPrecondition("this watcher fell more than 10000 events behind; "
                                             "watch again with since_seq to catch up")
                if ev["seq"] > last and match(ev):
                    yield cv.event(ev)
        finally:
            self.m.unsubscribe(q)


class HostService:
    def __init__(self, m: Manager):
        self.m = m

    async def GetHostInfo(self, req, ctx):
        return cv.host(self.m.host_info())


READ_ONLY = {"GetImage", "ListImages", "Get", "List", "WatchEvents", "GetHostInfo"}
