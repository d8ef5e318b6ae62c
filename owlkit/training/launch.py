"""Starting N training processes on this machine (imports no torch: the launcher stays light).

* :func:`launch_torchrun`: ``python -m torch.distributed.run --nproc_per_node N -m owlkit.training ...``
  (PyTorch's own launcher; what ``owl train --nproc N`` runs);
* :func:`spawn`: ``torch.multiprocessing`` with the same environment torchrun sets (``RANK``,
  ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), for ``--launcher spawn`` and
  for programs that want to run a function on every rank.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(nproc: int, args: list[str], port: int | None = None) -> list[str]:
    """``python -m torch.distributed.run --nproc_per_node N ... -m owlkit.training ARGS``."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1",
        "--master_addr", "127.0.0.1", "--master_port", str(port or free_port()),
        "-m", "owlkit.training", *args,
    ]


def _threads_env(nproc: int) -> dict:
    env = dict(os.environ)
    # torchrun would set 1; on CPU share the cores instead (GPU runs barely use CPU threads).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def launch_torchrun(nproc: int, args: list[str]) -> int:
    """Run torchrun; a user error of the workers comes out as one line with exit code 2.

    The workers write their one-line error to ``OWLKIT_ERROR_FILE.rank{R}`` instead of printing
    it (:func:`owlkit.cli.report_error`). Their other output passes through as it comes; once an
    error file exists, what follows on stderr is torchrun's own report of the failed workers
    (a ``ChildFailedError`` traceback), which is held back and shown only if no error file explains
    the failure.
    """
    with tempfile.TemporaryDirectory(prefix="owlkit-torchrun-") as folder:
        error_file = os.path.join(folder, "error")
        env = _threads_env(nproc) | {"OWLKIT_ERROR_FILE": error_file}
        proc = subprocess.Popen(torchrun_command(nproc, args), env=env, stderr=subprocess.PIPE)
        held: list[bytes] = []

        def forward() -> None:
            for line in proc.stderr:
                if held or any(name.startswith("error.rank") for name in os.listdir(folder)):
                    held.append(line)
                else:
                    sys.stderr.buffer.write(line)
                    sys.stderr.flush()

        reader = threading.Thread(target=forward, daemon=True)
        reader.start()
        code = proc.wait()
        reader.join()
        errors = sorted((int(name.rsplit("rank", 1)[1]), name) for name in os.listdir(folder) if name.startswith("error.rank"))
        if code and errors:
            with open(os.path.join(folder, errors[0][1]), encoding="utf-8") as f:
                print(f.read().strip(), file=sys.stderr)
            return 2
        for line in held:
            sys.stderr.buffer.write(line)
        sys.stderr.flush()
        return code


def _spawn_entry(local_rank: int, nproc: int, port: int, fn, args) -> None:
    os.environ.update(
        RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    fn(*args)


def spawn(fn, nproc: int, args: tuple = ()) -> None:
    """Run ``fn(*args)`` in ``nproc`` fresh processes (spawned) that join one process group."""
    import torch.multiprocessing as mp  # heavy: the torchrun launcher needs no torch

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    mp.start_processes(_spawn_entry, args=(nproc, free_port(), fn, args), nprocs=nproc, join=True,
                       start_method="spawn")
