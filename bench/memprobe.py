"""Where an idle joined connection's memory goes, read from inside a chat_app node (issue 27
item 3): one node started like the Procfile with `bench.memprobe:app` (the node's own app
plus one route, /_memprobe, that no client of the bench calls), N idle joined connections of
the lean generator, and the node's own figures before and after:

    python -m bench.memprobe --connections 2000              # RSS, heap, greenlets, smaps
    python -m bench.memprobe --connections 2000 --tracemalloc  # + Python allocations by line

Per connection: RSS growth; glibc's heap in use (`mallinfo2`); anonymous memory by kind of
mapping (smaps); live greenlets, by what they run, and their saved C stacks
(`greenlet._stack_saved`); with --tracemalloc (the node runs with PYTHONTRACEMALLOC, which
itself costs memory: its RSS is not the figure), the allocations made between the two
snapshots that are still alive, by file and line. The route is added with Flask's
`add_url_rule`: nothing sits under the websocket path (a wrapper there would itself deepen
every connection's stack).
"""

from __future__ import annotations

import os

if os.environ.get("CHAT_MEMPROBE_NODE"):  # inside the node: wsgi patches the stdlib before anything
    import wsgi

    app = wsgi.app

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import sys
import tempfile
import time
import urllib.request
import weakref
from pathlib import Path
from typing import Any

if os.environ.get("CHAT_MEMPROBE_NODE"):

    class _Mallinfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
                *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
            )
        ]

    def _mallinfo() -> dict[str, int]:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        m = libc.mallinfo2()
        return {name: getattr(m, name) for name, _ in _Mallinfo2._fields_}

    def _smaps() -> dict[str, int]:
        """Resident KiB by kind of mapping: [heap], [stack], anonymous, files."""
        kinds: dict[str, int] = {}
        kind = ""
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split()
                if not head:
                    continue
                if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                    name = head[5] if len(head) > 5 else ""
                    kind = name if name.startswith("[") else ("file" if name else "anonymous")
                elif head[0] == "Rss:":
                    kinds[kind] = kinds.get(kind, 0) + int(head[1])
        return kinds

    _PAGE = os.sysconf("SC_PAGE_SIZE")
    _CHUNK = 16 * 1024  # CPython 3.11's data-stack chunk (_PY_DATA_STACK_CHUNK_SIZE)

    def _interpreter_frame(frame: Any) -> int:
        """The address of a frame object's _PyInterpreterFrame (3.11: PyFrameObject's
        f_frame, after PyObject_HEAD and f_back)."""
        return ctypes.c_void_p.from_address(id(frame) + 3 * ctypes.sizeof(ctypes.c_void_p)).value or 0

    def _resident_pages(bottom_frame: Any) -> int:
        """Resident pages of the data-stack chunk the greenlet's first frame lives in (it
        sits just after the chunk's header, at the start of the chunk's mmap)."""
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        start = _interpreter_frame(bottom_frame) & ~(_PAGE - 1)
        vec = (ctypes.c_ubyte * (_CHUNK // _PAGE))()
        if libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(_CHUNK), vec) != 0:
            return -1
        return sum(v & 1 for v in vec)

    _deepest: dict[str, Any] = {"bytes": 0, "stack": []}

    def _frame_bytes(code: Any) -> int:
        """A 3.11 _PyInterpreterFrame's size: its header and localsplus + value stack."""
        slots = len(code.co_varnames) + len(code.co_cellvars) + len(code.co_freevars) + code.co_stacksize
        return 9 * 8 + 8 * slots

    def _trace_depth() -> None:
        """How far into its data-stack chunk a connection's greenlet ever reaches, and the
        stack that reached furthest (CHAT_MEMPROBE_DEPTH=1: slow, for a few connections)."""
        import greenlet

        bases: dict[Any, int] = {}
        reaches = _deepest["by_greenlet"] = weakref.WeakKeyDictionary()

        def profile(frame: Any, event: str, _arg: Any) -> None:
            if event != "call" or frame.f_code.co_flags & 0x2A0:  # generator frames live on the heap
                return
            g = greenlet.getcurrent()
            base = bases.get(g)
            if base is None:
                bottom = frame
                while bottom.f_back is not None:
                    bottom = bottom.f_back
                if bottom.f_code.co_name != "_handle_and_close_when_done":
                    return
                base = bases[g] = _interpreter_frame(bottom)
            here = _interpreter_frame(frame)
            if here < base:
                bases[g], base = here, here
            reach = here + _frame_bytes(frame.f_code) - base
            if _CHUNK > reach > reaches.get(g, (0, ""))[0]:
                stack, f = [], frame
                while f is not None:
                    stack.append(f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_code.co_name}")
                    f = f.f_back
                reaches[g] = (reach, " < ".join(stack))
                if reach > _deepest["bytes"]:
                    _deepest.update(bytes=reach, stack=stack)

        sys.setprofile(profile)

    if os.environ.get("CHAT_MEMPROBE_DEPTH"):
        _trace_depth()

    def _by_stack(reaches: Any) -> list[tuple[str, int, int]]:
        """(the stack that reached deepest, how many greenlets, their reach), deepest first."""
        counted: dict[str, list[int]] = {}
        for reach, stack in list(reaches.values()):
            entry = counted.setdefault(stack, [0, 0])
            entry[0] += 1
            entry[1] = max(entry[1], reach)
        return sorted(((k, v[0], v[1]) for k, v in counted.items()), key=lambda x: -x[2])

    def _greenlets() -> dict[str, Any]:
        import greenlet

        by_kind: dict[str, list[int]] = {}
        for obj in gc.get_objects():
            if isinstance(obj, greenlet.greenlet) and not obj.dead:
                frame = obj.gr_frame
                while frame is not None and frame.f_back is not None:
                    frame = frame.f_back
                where = f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_code.co_name}" if frame else "?"
                depth = 0
                top = obj.gr_frame
                while top is not None:
                    depth += 1
                    top = top.f_back
                entry = by_kind.setdefault(where, [0, 0, 0, 0])
                entry[0] += 1
                entry[1] += obj._stack_saved
                entry[2] = max(entry[2], depth)
                if frame is not None and sys.version_info[:2] == (3, 11):
                    entry[3] += max(0, _resident_pages(frame)) * _PAGE
        return {
            k: {"count": v[0], "stack_saved": v[1], "max_frames": v[2], "data_stack_resident": v[3]}
            for k, v in by_kind.items()
        }

    def _probe() -> Any:
        import tracemalloc

        from flask import request

        snap = request.args.get("snap")
        if snap and tracemalloc.is_tracing():
            gc.collect()
            tracemalloc.take_snapshot().dump(snap)
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return {
            "rss": rss,
            "mallinfo": _mallinfo(),
            "smaps_kib": _smaps(),
            "greenlets": _greenlets(),
            "gc_objects": len(gc.get_objects()),
            "deepest": {
                "bytes": _deepest["bytes"],
                "stack": _deepest["stack"],
                "by_stack": _by_stack(_deepest.get("by_greenlet", {})),
            },
            "traced": tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None,
        }

    app.add_url_rule("/_memprobe", "memprobe", _probe)


def _get(port: int, query: str = "") -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_memprobe{query}", timeout=60) as r:
        return json.loads(r.read())


def _diff_greenlets(before: dict[str, Any], after: dict[str, Any], n: int) -> list[str]:
    lines = [
        "| greenlets running | count before | after | per connection | saved C stack after (KiB) "
        "| per connection (KiB) | deepest (frames) |"
    ]
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind in sorted(set(before) | set(after), key=lambda k: -after.get(k, {}).get("stack_saved", 0)):
        b, a = before.get(kind, {}), after.get(kind, {})
        lines.append(
            f"| {kind} | {b.get('count', 0)} | {a.get('count', 0)} | {(a.get('count', 0) - b.get('count', 0)) / n:.2f} "
            f"| {a.get('stack_saved', 0) / 1024:.0f} "
            f"| {(a.get('stack_saved', 0) - b.get('stack_saved', 0)) / n / 1024:.2f} "
            f"| {a.get('max_frames', 0)} | {a.get('data_stack_resident', 0) / max(a.get('count', 0), 1) / 1024:.1f} |"
        )
    return lines


def report(before: dict[str, Any], after: dict[str, Any], n: int) -> str:
    per = lambda a, b: (a - b) / n / 1024  # noqa: E731
    lines = [f"Per connection ({n:,} idle joined on one node), KiB:", ""]
    lines += ["| what | KiB per connection |", "|---|---:|"]
    lines.append(f"| RSS (the worker) | {per(after['rss'], before['rss']):.2f} |")
    ma, mb = after["mallinfo"], before["mallinfo"]
    in_use = per(ma["uordblks"] + ma["hblkhd"], mb["uordblks"] + mb["hblkhd"])
    lines.append(f"| glibc heap in use (uordblks + hblkhd) | {in_use:.2f} |")
    lines.append(f"| glibc heap free inside its arena (fordblks) | {per(ma['fordblks'], mb['fordblks']):.2f} |")
    for kind in sorted(set(after["smaps_kib"]) | set(before["smaps_kib"])):
        d = (after["smaps_kib"].get(kind, 0) - before["smaps_kib"].get(kind, 0)) / n
        lines.append(f"| resident, {kind} mappings | {d:.2f} |")
    lines.append(f"| gc-tracked objects (count) | {(after['gc_objects'] - before['gc_objects']) / n:.1f} |")
    if after["traced"] is not None:
        lines.append(f"| traced Python allocations | {per(after['traced'], before['traced']):.2f} |")
    lines += ["", *_diff_greenlets(before["greenlets"], after["greenlets"], n)]
    if after["deepest"]["bytes"]:
        lines += ["", f"Deepest reach into a connection greenlet's data stack: {after['deepest']['bytes']} bytes, at:"]
        lines += [f"    {f}" for f in after["deepest"]["stack"]]
        lines += ["", "Each greenlet's deepest reach, by the stack that reached it (greenlets, bytes):"]
        lines += [f"    {count} x {reach}: {stack}" for stack, count, reach in after["deepest"]["by_stack"][:8]]
    return "\n".join(lines)


def traced_lines(before: str, after: str, n: int, top: int = 40) -> str:
    import tracemalloc

    diff = tracemalloc.Snapshot.load(after).compare_to(tracemalloc.Snapshot.load(before), "lineno")
    lines = ["| allocated at | KiB per connection | blocks per connection |", "|---|---:|---:|"]
    for stat in diff[:top]:
        frame = stat.traceback[0]
        where = f"{'/'.join(frame.filename.rsplit('/', 2)[-2:])}:{frame.lineno}"
        lines.append(f"| {where} | {stat.size_diff / n / 1024:.2f} | {stat.count_diff / n:.2f} |")
    return "\n".join(lines)


async def run(connections: int, rooms: int, tracing: bool, settle: float, depth: bool = False) -> str:
    from . import procs
    from .__main__ import OURS
    from .workloads import Member, close_all, connect_all, join_all

    root = Path(tempfile.mkdtemp(prefix="chat-memprobe-"))
    redis = procs.start_redis(root / "redis")
    env = {**OURS.spec.env, "CHAT_MEMPROBE_NODE": "1"}
    if tracing:
        env["PYTHONTRACEMALLOC"] = "1"
    if depth:
        env["CHAT_MEMPROBE_DEPTH"] = "1"
    spec = procs.NodeSpec("bench.memprobe:app", env)
    node = procs.start_node(spec, f"redis://127.0.0.1:{redis.port}/0", root, "probe-a")
    try:
        procs.wait_healthy(node)
        await asyncio.sleep(1.0)
        before = _get(node.port, f"?snap={root}/before.snap" if tracing else "")
        members = [Member(node.port, f"idle{i}", i % rooms) for i in range(connections)]
        clients, _ = await connect_all([(m.port, m.user, None) for m in members])
        try:
            await join_all([(cl, f"room{m.room}") for cl, m in zip(clients, members, strict=True)])
            await asyncio.sleep(settle)
            after = _get(node.port, f"?snap={root}/after.snap" if tracing else "")
        finally:
            close_all(clients)
        out = report(before, after, connections)
        if tracing:
            out += "\n\nStill-alive allocations made since the first snapshot, by line:\n\n"
            out += traced_lines(f"{root}/before.snap", f"{root}/after.snap", connections)
        return out
    finally:
        node.stop()
        redis.stop()
        if not os.environ.get("BENCH_KEEP_LOGS"):
            import shutil

            with contextlib.suppress(OSError):
                shutil.rmtree(root)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memprobe", description=__doc__)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--tracemalloc", action="store_true", help="also diff Python allocations by line")
    parser.add_argument(
        "--depth", action="store_true", help="trace the deepest data-stack reach (slow: few connections)"
    )
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the last join's ack")
    args = parser.parse_args()
    t = time.perf_counter()
    print(asyncio.run(run(args.connections, args.rooms, args.tracemalloc, args.settle, args.depth)))
    print(f"\n({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
