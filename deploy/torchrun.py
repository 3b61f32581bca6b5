"""`learn train --nproc N`: offline training as N data-parallel ranks under torchrun, never exposed.

torchrun's rendezvous store (torch's TCPStore) and gloo listen on every interface, so the job runs in
a private network namespace whose only interface is loopback, which nothing outside it can reach:

    unshare -n [-r] -- sh -c 'ip link set lo up && exec "$@"' torchrun \\
        python -m torch.distributed.run --standalone --nproc_per_node N -m deploy.cli train <options>

As root `unshare -n` is enough; any other user also needs a user namespace (`-r`: root inside it,
no more rights outside it), which the kernel must allow. `unavailable_reason()` probes that without
starting anything, and `launch` refuses with `TorchrunError` (the reason) when it cannot work.
Each rank runs `learn train` without `--nproc` (trainer/distributed.py reads torchrun's environment);
the ranks' intra-op threads are split so that ranks x threads <= cores.

Over several machines torchrun is started on each by hand (README, "Distributed training"); the
network must then be a private one, as torch's store has no authentication.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping


class TorchrunError(RuntimeError):
    """A distributed run cannot be started here (no private network namespace)."""


def unshare_command(euid: int | None = None) -> list[str]:
    """`unshare` with a new network namespace (and, for a user other than root, a user namespace)."""
    euid = os.geteuid() if euid is None else euid
    return ["unshare", "-n"] if euid == 0 else ["unshare", "-r", "-n"]


def unavailable_reason(euid: int | None = None) -> str:
    """Why a private loopback-only network namespace cannot be made here, or "" if it can."""
    missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
    if missing:
        return (f"{' and '.join(missing)} not found (util-linux / iproute2): `learn train --nproc N` runs torchrun "
                "in a private network namespace, because its rendezvous store listens on every interface")  # fmt: skip
    probe = subprocess.run([*unshare_command(euid), "--", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return (f"cannot create a private network namespace ({probe.stderr.strip() or f'exit {probe.returncode}'}): "
                "run as root, or allow unprivileged user namespaces (kernel.unprivileged_userns_clone=1)")  # fmt: skip
    return ""


def train_args(options: Mapping[str, object]) -> list[str]:
    """`learn train` options -> its command-line arguments: {"--seed": 1, "--whiten": False} ->
    ["--seed", "1", "--no-whiten"]; None values are left out (the settings decide)."""
    args: list[str] = []
    for flag, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{flag.removeprefix('--')}")
        else:
            args += [flag, str(value)]
    return args


def torchrun_command(nproc: int, args: list[str], python: str = sys.executable, euid: int | None = None) -> list[str]:
    """The whole command: torchrun on this machine's loopback only, in a fresh namespace."""
    return [
        *unshare_command(euid), "--", "sh", "-c", 'ip link set lo up && exec "$@"', "torchrun",
        python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "deploy.cli", "train", *args,
    ]  # fmt: skip


def launch(nproc: int, args: list[str], threads: int) -> int:
    """Run `learn train <args>` as `nproc` ranks of `threads` threads each; -> torchrun's exit status."""
    if nproc < 2:
        raise ValueError("launch is for 2 or more ranks")
    reason = unavailable_reason()
    if reason:
        raise TorchrunError(reason)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.run(torchrun_command(nproc, [*args, "--threads", str(threads)]), env=env).returncode
