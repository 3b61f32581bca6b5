"""deploy/milvus_server.py: the server is isolated (its own network namespace with only loopback, one
door: a forwarded port on this machine's 127.0.0.1) and stopping it leaves no process behind."""

import os
import subprocess

import psutil

from deploy import milvus_server as ms


def netns_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def server_processes(server: ms.MilvusServer) -> list[psutil.Process]:
    wrapper = psutil.Process(server.wrapper.pid)
    return [wrapper, *wrapper.children(recursive=True), psutil.Process(server.forwarder.pid)]


def test_server_lives_in_its_own_loopback_only_namespace(milvus_server):
    procs = server_processes(milvus_server)
    assert any(p.name() == "milvus" for p in procs)  # the server binary itself runs
    theirs = {netns_of(p.pid) for p in procs}
    assert theirs == {netns_of(milvus_server.wrapper.pid)} and netns_of(os.getpid()) not in theirs
    links = subprocess.run(["nsenter", f"--net=/proc/{milvus_server.wrapper.pid}/ns/net", "ip", "-o", "link"],
                           capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
    assert [line.split(":")[1].strip() for line in links] == ["lo"]
    # In this namespace, only the forwarder's listening socket: bound to loopback.
    mine = [c for c in psutil.Process(milvus_server.forwarder.pid).net_connections("tcp") if c.status == "LISTEN"]
    assert [(c.laddr.ip, c.laddr.port) for c in mine] == [("127.0.0.1", milvus_server.port)]


def test_stop_leaves_nothing_running(milvus_server):
    before = server_processes(milvus_server)
    milvus_server.restart()  # stop (SIGINT to the wrapper), then start on the same port
    assert not [p for p in before if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert milvus_server.alive() and ms.unavailable_reason() == ""
