"""A real single-node SLURM cluster for the tests (docs/design.md §10): munged, slurmctld and slurmd with a
temporary config and state folder, started in seconds and stopped by their process ids.

Everything lives under one folder: the munge key and socket, slurm.conf, the state and spool
folders, the daemons' logs and pid files. `SLURM_CONF` points the SLURM commands at it, so a
machine's own SLURM setup (if any) is never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
MUNGE_SOCKET = "/run/munge/munge.socket.2"
CONF_LINK = "/run/slurm/conf"


def missing_tools() -> list[str]:
    return [t for t in (*DAEMONS, "sbatch", "squeue", "scancel", "srun") if shutil.which(t) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


@dataclass
class Cluster:
    root: Path
    partition: str = "main"
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What SLURM commands (and Snakemake's executor) need on top of their environment to
        talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env={**os.environ, **self.env}, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def log(self, daemon: str) -> str:
        path = self.root / f"{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def write_config(self) -> None:
        host = socket.gethostname().split(".")[0]
        # twice the machine's cores (SlurmdParameters=config_overrides lets slurmd accept it): two
        # jobs of `threads: workflow.cores` run side by side, as on a real multi-node cluster,
        # while each still uses the same thread count as a local run (identical results)
        cpus = 2 * (os.cpu_count() or 1)
        mem = max(1024, int(_mem_mb() * 0.85))
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        r = self.root
        self.conf.write_text(f"""\
ClusterName=pipetest
SlurmctldHost={host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=300
KillWait=10
InactiveLimit=0
JobRequeue=1
SlurmdParameters=config_overrides
SlurmctldParameters=enable_configless
NodeName={host} CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName={self.partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, timeout: float = 60) -> Cluster:
        self.write_config()
        r = self.root
        # munged on its default socket: a configless slurmd authenticates before it has the config
        Path(MUNGE_SOCKET).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "munged",
                "--force",
                f"--socket={MUNGE_SOCKET}",
                f"--key-file={r}/munge/munge.key",
                f"--pid-file={r}/munged.pid",
                f"--log-file={r}/munged.log",
                f"--seed-file={r}/munge/munged.seed",
            ],
            check=True,
            capture_output=True,
        )
        self.pids["munged"] = self._wait_pid(r / "munged.pid", timeout)
        host = socket.gethostname().split(".")[0]
        port = next(ln.split("=")[1] for ln in self.conf.read_text().splitlines() if ln.startswith("SlurmctldPort="))
        # slurmd runs "configless" (it fetches slurm.conf from slurmctld and caches it under
        # /run/slurm/conf), as on many real clusters: commands inside jobs find the config there
        # even when SLURM_CONF is not passed down (the SLURM job-step plugin drops it for srun)
        starts = {
            "slurmctld": ["slurmctld", "-f", str(self.conf)],
            "slurmd": ["slurmd", "--conf-server", f"{host}:{port}"],
        }
        for daemon in ("slurmctld", "slurmd"):
            proc = subprocess.run(starts[daemon], env={**os.environ, **self.env}, capture_output=True, text=True)
            if proc.returncode != 0:
                self.stop()
                raise RuntimeError(f"{daemon} did not start: {proc.stderr}\n{self.log(daemon)}")
            self.pids[daemon] = self._wait_pid(r / f"{daemon}.pid", timeout)
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"the SLURM node did not come up (sinfo: {state!r})\n{self.log('slurmctld')}\n{self.log('slurmd')}"
        )

    def _wait_pid(self, path: Path, timeout: float) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.1)
        raise RuntimeError(f"no pid file {path}")

    def stop(self) -> None:
        """Cancel what is left, then stop the daemons by their process ids."""
        if "slurmctld" in self.pids:
            self.run("scancel", "--full", "--quiet", "-u", os.environ.get("USER", "root"), check=False)
        for daemon in reversed(DAEMONS):
            pid = self.pids.pop(daemon, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        # the configless slurmd's link to its cached config: left behind, every SLURM command
        # (and each Snakemake start, whose SLURM plugin asks `scontrol show config`) would spend
        # ~9 s trying to reach this stopped controller
        link = Path(CONF_LINK)
        if link.is_symlink() and str(os.readlink(link)).startswith(str(self.root)):
            link.unlink()

    def wait_idle(self, timeout: float = 600) -> None:
        """Until no job is pending or running."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.run("squeue", "-h", "-o", "%i").stdout.strip():
                return
            time.sleep(1)
        raise TimeoutError(self.run("squeue").stdout)
