"""store/process.pid_alive, the one pid check of store/ and deploy/: a zombie is not alive."""

import os
import subprocess
import sys

import psutil
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from store.process import pid_alive


def test_a_zombie_and_a_reaped_process_are_not_alive():
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    # not reaped yet: the child is a zombie once it has exited
    until_zombie = Retrying(stop=stop_after_delay(60), wait=wait_fixed(0.05),
                            retry=retry_if_result(lambda status: status != psutil.STATUS_ZOMBIE))  # fmt: skip
    assert until_zombie(lambda: psutil.Process(child.pid).status()) == psutil.STATUS_ZOMBIE
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)
