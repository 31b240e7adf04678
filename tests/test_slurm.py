"""The workflow on a real single-node SLURM cluster on this machine (slurm/cluster/*.sh), through the project's
profile exactly as users run it (`snakemake --profile slurm` from a copy of the repository):

- the test pipeline: every job a SLURM job that COMPLETED (checked with sacct), on the right partition, with
  the site settings of the layered profile, and nothing left to do afterwards;
- a training job requeued by SLURM mid-run resumes and ends with the same weights as an uninterrupted run;
- a training job cancelled once is retried by Snakemake with more time and memory, and resumes.

The session fixture installs and starts the cluster (slurm/cluster/install.sh, start.sh) and stops the daemons
it started (stop.sh). Without root or a way to install the packages the tests are skipped; under CI they must
run, so a failing install or start is an error there.
"""

import os
import re
import shutil
import signal
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, SNAKEMAKE, copy_repo, env_with_repo

pytestmark = pytest.mark.slow

CLUSTER = REPO / "slurm" / "cluster"
GPU_RULES = {"pretrain", "sensitivity", "prune", "finetune", "evaluate"}
PRETRAIN = "results/pretrain/digits/small_cnn/seed0/model.pt"
PRETRAIN_LOG = "logs/pretrain/digits/small_cnn/seed0.log"
RESUME = f"resume/{PRETRAIN}.state.pt"
# Fast status polling for the tests only (the plugin's defaults suit hour-long jobs), and one thread per job, so
# that two jobs share this 2-core node (the profile, capped at the node's cores, gives each 2 and runs them one
# at a time; test_no_request_of_the_profile_exceeds_the_largest_node_at_any_attempt checks those requests).
TEST_OVERLAY = {
    "slurm-init-seconds-before-status-checks": 2,
    "seconds-between-status-checks": 2,
    "max-threads": 1,
    "latency-wait": 5,
}
SACCT_FIELDS = ["JobIDRaw", "JobName", "Comment", "State", "Partition", "Account", "QOS", "Timelimit", "ReqMem", "ReqTRES", "AllocTRES", "WorkDir"]
SESSION_START = datetime.now() - timedelta(minutes=1)


def _run(cmd, **kwargs):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local cluster, installed and started for the session; the daemons it had to start are stopped after."""
    if os.geteuid() != 0:
        pytest.skip("SLURM tests need root (slurm/cluster/install.sh installs Debian packages and starts daemons)")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("SLURM tests need Debian's slurm packages or apt-get to install them")
    started = False
    for script in ("install.sh", "start.sh"):
        try:
            run = _run(["bash", CLUSTER / script], timeout=900)
            failed = run.returncode != 0
            detail = (run.stdout + run.stderr)[-3000:]
        except subprocess.TimeoutExpired as error:
            failed, detail = True, f"timed out after {error.timeout} s"
        if failed:
            message = f"could not set up the local SLURM cluster: slurm/cluster/{script} failed:\n{detail}"
            if os.environ.get("CI"):
                pytest.fail(message)  # CI has root and the package registry: this must work there
            pytest.skip(message)
        if script == "start.sh":
            started = "already running" not in run.stderr
    yield
    if started:
        stop = _run(["bash", CLUSTER / "stop.sh"], timeout=300)
        assert stop.returncode == 0, stop.stdout + stop.stderr


def _write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _env(repo: Path, extra: dict | None = None) -> dict:
    env = env_with_repo()
    env["PYTHONPATH"] = str(repo)  # the copy's advprune (jobs inherit it: sbatch --export=ALL)
    for key in [k for k in env if k.startswith("ADVPRUNE_SLURM_")]:
        del env[key]
    env.update(extra or {})
    return env


def _command(profiles, configs, args, limit):
    cmd = ["timeout", "-s", "INT", "-k", "30", str(limit), SNAKEMAKE]  # a hung Snakemake ignores SIGTERM
    for profile in profiles:
        cmd += ["--profile", str(profile)]
    return cmd + [*args, "--configfile", *configs]  # after the targets: --configfile takes several values


class Workflow:
    """A copy of the repository run through `snakemake --profile slurm --profile ...` from its root."""

    def __init__(self, root: Path, profiles, configs=(".test/config.yaml",), env=None):
        self.repo = copy_repo(root)
        self.profiles, self.configs = ["slurm", *profiles], list(configs)
        self.env = _env(self.repo, env)
        self.proc = None

    def run(self, *args, limit=600):
        return _run(_command(self.profiles, self.configs, args, limit), cwd=self.repo, env=self.env, timeout=limit + 60)

    def start(self, *args, limit=420):
        self.out = open(self.repo / "snakemake.out", "w")
        cmd = _command(self.profiles, self.configs, args, limit)
        self.proc = subprocess.Popen(cmd, cwd=self.repo, env=self.env, stdout=self.out, stderr=subprocess.STDOUT)
        return self

    def wait(self, timeout=480) -> str:
        rc = self.proc.wait(timeout=timeout)
        self.out.close()
        text = (self.repo / "snakemake.out").read_text()
        assert rc == 0, f"snakemake exited {rc}:\n{text[-5000:]}"
        return text

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # timeout(1) passes it on: Snakemake cancels its SLURM jobs
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def jobs(self, duplicates=False) -> list[dict]:
        """This copy's SLURM jobs in the accounting database (sacct), oldest first."""
        cmd = ["sacct", "-X", "-P", "-n", "-S", SESSION_START.strftime("%Y-%m-%dT%H:%M:%S"), "-o", ",".join(SACCT_FIELDS)]
        for _ in range(30):  # slurmctld hands job ends to slurmdbd asynchronously: let the last one arrive
            out = _run(cmd + (["-D"] if duplicates else []), check=True).stdout
            rows = [dict(zip(SACCT_FIELDS, line.split("|"))) for line in out.splitlines() if line.strip()]
            rows = [r for r in rows if Path(r["WorkDir"]) == self.repo]
            if not any(r["State"] in ("PENDING", "RUNNING", "COMPLETING") for r in rows):
                break
            time.sleep(0.5)
        return rows


def _planned(text: str) -> dict[str, int]:
    """Rule -> job count from a dry run's 'Job stats' table ({} when there is nothing to do)."""
    if "Job stats" not in text:
        assert "Nothing to be done" in text, text[-3000:]
        return {}
    table = text.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def _rule_of(comment: str, names) -> str:
    """The rule of a job from its SLURM comment: rule_<name>[_wildcards_<values>]."""
    for name in sorted(names, key=len, reverse=True):
        if comment == f"rule_{name}" or comment.startswith(f"rule_{name}_"):
            return name
    raise AssertionError(f"SLURM job comment {comment!r} names no rule of the workflow")


# ---------------------------------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def pipeline(slurm_cluster, tmp_path_factory):
    """The test configuration's whole pipeline, layered with the local cluster's site profile (slurm/cluster:
    account, QoS, partition selection) and the GPU model from the environment."""
    root = tmp_path_factory.mktemp("slurm-pipeline")
    overlay = _write_yaml(tmp_path_factory.mktemp("overlay") / "profile.yaml", TEST_OVERLAY)
    wf = Workflow(root, ["slurm/cluster", overlay], env={"ADVPRUNE_SLURM_GPU_MODEL": "fake"})
    dry = wf.run("-n")
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    plan = _planned(dry.stdout + dry.stderr)
    started = time.time()
    run = wf.run()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    print(f"pipeline through SLURM: {time.time() - started:.0f} s")
    return wf, plan, run.stdout + run.stderr


def test_every_job_of_the_pipeline_completed_as_a_slurm_job(pipeline):
    wf, plan, log = pipeline
    # One SLURM job per job of the dry run (the profile groups no jobs); `all` has nothing to run, aggregate and
    # report are local rules (run by Snakemake itself).
    expected = {rule: n for rule, n in plan.items() if rule not in ("all", "aggregate", "report")}
    jobs = wf.jobs()
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        by_rule.setdefault(_rule_of(job["Comment"], plan), []).append(job)
    assert {rule: len(js) for rule, js in by_rule.items()} == expected, [(j["JobIDRaw"], j["Comment"]) for j in jobs]
    run_ids = set(re.findall(r"SLURM run ID: (\S+)", log))
    assert len(run_ids) == 1
    for rule, rule_jobs in by_rule.items():
        gpu = rule in GPU_RULES
        for job in rule_jobs:
            where = f"{rule} (SLURM job {job['JobIDRaw']})"
            assert job["State"] == "COMPLETED", where
            assert job["JobName"] in run_ids, where  # submitted by this run
            # Site settings from slurm/cluster/profile.yaml, GPU model from ADVPRUNE_SLURM_GPU_MODEL.
            assert (job["Account"], job["QOS"]) == ("root", "normal"), where
            assert job["Partition"] == ("gpu" if gpu else "cpu"), where
            # --gpus=fake:1: the GPU model from ADVPRUNE_SLURM_GPU_MODEL reached sbatch.
            assert ("gres/gpu:fake=1" in job["ReqTRES"]) == gpu, f"{where}: {job['ReqTRES']}"
            assert ("gres/gpu" in job["AllocTRES"]) == gpu, f"{where}: {job['AllocTRES']}"
            # slurm-keep-successful-logs: the job's SLURM log stays under logs/slurm/.
            assert list((wf.repo / "logs/slurm").rglob(f"{job['JobIDRaw']}.log")), where
    evaluated = {job["Comment"] for job in by_rule["evaluate"]}
    assert len(evaluated) == plan["evaluate"]  # one job per evaluated model, its wildcards in the comment
    assert (wf.repo / "results/report/tables/robustness.csv").exists()


def test_no_request_of_the_profile_exceeds_the_largest_node_at_any_attempt(slurm_cluster):
    import yte

    profile = yte.process_yaml((REPO / "slurm/profile.yaml").read_text(), require_use_yte=True)
    node = dict(field.split("=", 1) for field in _run(["scontrol", "-o", "show", "node"], check=True).stdout.split() if "=" in field)
    refused = []
    for rule, resources in profile["set-resources"].items():
        threads = profile["set-threads"].get(rule, 1)
        assert threads <= int(node["CPUTot"]), rule
        for attempt in (1, 2, 3):
            mem = eval(str(resources["mem_mb"]), {"attempt": attempt, "threads": threads})  # as Snakemake evaluates it
            assert mem <= int(node["RealMemory"]), (rule, attempt, mem)
            gpu = ["-p", "gpu", "--gpus=1", f"--cpus-per-gpu={threads}"] if resources.get("gpu") else ["-p", "cpu", "--cpus-per-task=1"]
            test = _run(["sbatch", "--test-only", *gpu, f"--mem={mem}", "--wrap", "true"], cwd="/tmp")
            if test.returncode != 0:
                refused.append((rule, attempt, test.stderr.strip()))
    assert not refused, refused


def test_nothing_left_to_do_after_the_slurm_run(pipeline):
    wf, _, _ = pipeline
    dry = wf.run("-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert _planned(dry.stdout + dry.stderr) == {}


# ---------------------------------------------------------------------------------------- preemption, retries


LONG_PRETRAIN = {"pretrain": {"epochs": 80}}  # ~20 s of job on one core: time to interrupt it mid-run


@pytest.fixture(scope="module")
def site_profile(tmp_path_factory) -> Path:
    """slurm/site-example.yaml with this cluster's values in place of the placeholders."""
    site = yaml.safe_load((REPO / "slurm/site-example.yaml").read_text())
    assert set(site) == {"default-resources", "slurm-qos"} and set(site["default-resources"]) == {"slurm_account", "slurm_partition"}
    site["default-resources"].update(slurm_account="root", slurm_partition="cpu")
    site["slurm-qos"] = "normal"
    return _write_yaml(tmp_path_factory.mktemp("site") / "my-site.yaml", site)


def _training_workflow(tmp_path_factory, site_profile, name):
    """A long pretrain through the profile layered with the filled-in site example; the GPU rules' partition
    comes from ADVPRUNE_SLURM_GPU_PARTITION."""
    overlay = _write_yaml(tmp_path_factory.mktemp("overlay") / "profile.yaml", TEST_OVERLAY)
    configs, env = [".test/config.yaml", "long.yaml"], {"ADVPRUNE_SLURM_GPU_PARTITION": "gpu"}
    wf = Workflow(tmp_path_factory.mktemp(name), [site_profile, overlay], configs=configs, env=env)
    _write_yaml(wf.repo / "long.yaml", LONG_PRETRAIN)
    return wf


def _running_training_job(wf: Workflow) -> str | None:
    """The SLURM id of the pretrain job once it runs and has written resume state (>= 1 epoch done)."""
    assert wf.proc.poll() is None, (wf.repo / "snakemake.out").read_text()[-3000:]
    if not (wf.repo / RESUME).exists():
        return None
    for line in _run(["squeue", "-h", "-o", "%i|%k|%Z|%T"], check=True).stdout.splitlines():
        job_id, comment, workdir, state = line.split("|")
        if comment.startswith("rule_pretrain") and Path(workdir) == wf.repo and state == "RUNNING":
            return job_id
    return None


# How each run is interrupted once its job has finished an epoch: `scontrol requeue` is what SLURM preemption
# (PreemptMode=REQUEUE) and node failures with --requeue do; `scancel` makes the job fail.
INTERRUPTIONS = {"uninterrupted": None, "requeued": ["scontrol", "requeue"], "cancelled": ["scancel"]}


@pytest.fixture(scope="module")
def training_runs(slurm_cluster, tmp_path_factory, site_profile):
    """The same long pretraining three times side by side: uninterrupted, requeued mid-run, cancelled mid-run.
    Returns the workflows and the SLURM job id each interruption hit."""
    runs = {name: _training_workflow(tmp_path_factory, site_profile, name).start(PRETRAIN) for name in INTERRUPTIONS}
    try:
        hit: dict[str, str] = {}
        deadline = time.time() + 300
        while len(hit) < sum(cmd is not None for cmd in INTERRUPTIONS.values()):
            assert time.time() < deadline, f"no running pretrain job with resume state to interrupt after 300 s: {hit}"
            for name, cmd in INTERRUPTIONS.items():
                if cmd is not None and name not in hit and (job_id := _running_training_job(runs[name])):
                    done = _run([*cmd, job_id])
                    assert done.returncode == 0, done.stderr
                    hit[name] = job_id
            time.sleep(0.2)
        outputs = {name: wf.wait() for name, wf in runs.items()}
        yield runs, hit, outputs
    finally:
        for wf in runs.values():
            wf.stop()


def _resumed_after(wf: Workflow) -> list[int]:
    log = (wf.repo / PRETRAIN_LOG).read_text()
    return [int(n) for n in re.findall(rf"resumed from {re.escape(RESUME)} after epoch (\d+)", log)]


def _assert_same_weights(a: Workflow, b: Workflow):
    wa, wb = (torch.load(wf.repo / PRETRAIN, weights_only=True)["state_dict"] for wf in (a, b))
    assert list(wa) == list(wb)
    different = [name for name in wa if not torch.equal(wa[name], wb[name])]
    assert not different, f"weights differ from the uninterrupted run: {different}"


def _pretrain_jobs(wf: Workflow, duplicates=False) -> list[dict]:
    return [j for j in wf.jobs(duplicates) if j["Comment"].startswith("rule_pretrain")]


def test_the_uninterrupted_training_ran_once_on_the_gpu_partition(training_runs):
    runs, _, _ = training_runs
    wf = runs["uninterrupted"]
    [job] = _pretrain_jobs(wf)
    # Site settings from the filled-in slurm/site-example.yaml, partition from ADVPRUNE_SLURM_GPU_PARTITION.
    assert (job["State"], job["Partition"], job["Account"], job["QOS"]) == ("COMPLETED", "gpu", "root", "normal")
    assert "gres/gpu=1" in job["ReqTRES"] and "gres/gpu:" not in job["ReqTRES"]  # --gpus=1: no GPU model set
    [fetch] = [j for j in wf.jobs() if j["Comment"].startswith("rule_fetch_data")]
    assert (fetch["State"], fetch["Partition"]) == ("COMPLETED", "cpu")  # default-resources: slurm_partition
    assert _resumed_after(wf) == []


def test_a_requeued_training_job_resumes_to_the_same_weights(training_runs):
    runs, hit, _ = training_runs
    wf, job_id = runs["requeued"], hit["requeued"]
    # SLURM ran the same job twice (sacct -D shows the requeued run); Snakemake saw one job and no failure.
    assert [j["State"] for j in _pretrain_jobs(wf, duplicates=True)] == ["REQUEUED", "COMPLETED"]
    assert [j["JobIDRaw"] for j in _pretrain_jobs(wf)] == [job_id]
    resumed = _resumed_after(wf)
    assert len(resumed) == 1 and 1 <= resumed[0] < LONG_PRETRAIN["pretrain"]["epochs"], resumed
    assert not (wf.repo / RESUME).exists()  # removed once the final checkpoint is written
    _assert_same_weights(wf, runs["uninterrupted"])


def test_a_cancelled_training_job_is_retried_with_more_time_and_resumes(training_runs):
    runs, hit, outputs = training_runs
    wf = runs["cancelled"]
    attempts = _pretrain_jobs(wf)
    assert [j["JobIDRaw"] == hit["cancelled"] for j in attempts] == [True, False], attempts
    assert [j["State"].split()[0] for j in attempts] == ["CANCELLED", "COMPLETED"]  # "CANCELLED by <uid>"
    # runtime min(1440 * attempt, 2880) min and mem_mb 8000 * attempt in slurm/profile.yaml.
    assert [j["Timelimit"] for j in attempts] == ["1-00:00:00", "2-00:00:00"]
    assert [j["ReqMem"] for j in attempts] == ["8000M", "16000M"]
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S*rule_pretrain", outputs["cancelled"])
    assert submitted == [j["JobIDRaw"] for j in attempts]  # one Snakemake run submitted both: a retry
    assert len(_resumed_after(wf)) == 1
    _assert_same_weights(wf, runs["uninterrupted"])
