"""The container image, built and run: the README's `docker build` / `docker run` commands under podman.

Builds a base image from Debian packages (no registry needed: mmdebstrap; or $SCRATCHLLM_CONTAINER_BASE,
e.g. python:3.11-slim where a registry is reachable), builds the project image on it, serves a model directory
written by the micro pipeline under umask 022, waits for /health, runs the image's HEALTHCHECK, makes one
completion with the official openai client from the host, and checks the server runs as non-root and cannot
write its model volume. Skipped, with the reason, where no container runtime can run.

The two container tests are slow (pytest -m slow): ~1.5 min with the base image and the torch layer cached,
~13 min cold on a loaded 2-core VM (docs/benchmarks.md). The base image, podman's storage and its layer cache
live in /var/tmp/scratchllm-container (outside the checkout; $SCRATCHLLM_CONTAINER_DIR moves it) and are
reused: only the first run builds the base and the torch layer. compose.yaml is run with podman-compose.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scratchllm.cli import main

ROOT = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("SCRATCHLLM_CONTAINER_DIR", "/var/tmp/scratchllm-container"))
LOCAL_BASE = "localhost/scratchllm-base:bookworm"  # Debian 12: Python 3.11, like python:3.11-slim
NAME = "scratchllm-container-test"

# podman as root on a host without systemd or a Docker daemon: runc (crun refuses hybrid cgroup v1/v2 hosts),
# cgroupfs, file events, and ulimits a VM can grant (podman's default asks for more processes than some allow).
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "host"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def readme_docker_commands() -> dict[str, list[str]]:
    """{"build": argv, "run": argv} of the README's `docker build` and `docker run` lines: the test runs those."""
    found = {}
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        words = shlex.split(line.strip(), comments=True) if line.startswith("docker ") else []
        if words[:2] in (["docker", "build"], ["docker", "run"]):
            found[words[1]] = words[1:]
    assert set(found) == {"build", "run"}, "the README must show `docker build ...` and `docker run ...` lines"
    return found


def compose_with_secret_file() -> str:
    """compose.yaml with its commented-out secret lines uncommented, as its header tells users to do."""
    optional = re.compile(r"^(\s*)# (- SCRATCHLLM_API_KEY_FILE=.*|secrets:.*|  api_key:|    file: \./secrets/api_key)$")
    lines = (ROOT / "compose.yaml").read_text(encoding="utf-8").splitlines()
    with_secret = [optional.sub(r"\1\2", line) for line in lines]
    assert sum(a != b for a, b in zip(lines, with_secret)) == 5, "compose.yaml's secret lines changed: fix the test"
    return "\n".join(with_secret) + "\n"


def test_readme_dockerfile_and_compose_agree():
    """Fast, no container runtime: what the slow tests below rely on, and what a deployment needs."""
    yaml = pytest.importorskip("yaml")
    cmds = readme_docker_commands()
    tag = cmds["build"][cmds["build"].index("-t") + 1]
    assert cmds["build"][-1] == "." and tag in cmds["run"]
    assert any(w.endswith(":/model:ro") for w in cmds["run"]), "the README must mount the model read-only"
    docker = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG BASE=python:3.11-slim" in docker and "FROM ${BASE}" in docker and "ARG TORCH=" in docker
    user = re.search(r"^USER (\S+)", docker, re.M)
    assert user and user.group(1).split(":")[0] not in ("root", "0"), "the server must not run as root"
    assert "HEALTHCHECK" in docker and "/health" in docker
    assert not re.search(r"^ENV .*API_KEY", docker, re.M), "no API key in the image"

    for text in ((ROOT / "compose.yaml").read_text(encoding="utf-8"), compose_with_secret_file()):
        config = yaml.safe_load(text)
        server = config["services"]["server"]
        assert server["image"] == tag and server["build"] == "."
        volume = next(v for v in server["volumes"] if v["target"] == "/model")
        assert volume["read_only"] is True
        assert "/ready" in str(server["healthcheck"]["test"]) and server["restart"] in ("unless-stopped", "always")
        assert {"cpus", "memory"} <= set(server["deploy"]["resources"]["limits"])
        assert all("=" not in e or e.startswith("SCRATCHLLM_API_KEY_FILE=") for e in server["environment"])
    assert config["secrets"]["api_key"]["file"] == "./secrets/api_key" and server["secrets"] == ["api_key"]
    assert "SCRATCHLLM_API_KEY_FILE=/run/secrets/api_key" in server["environment"]


def podman(*args: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": str(WORK / "containers.conf"),
           "CONTAINERS_STORAGE_CONF": str(WORK / "storage.conf")}
    r = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        pytest.fail(f"podman {shlex.join(args)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def _skip(reason: str) -> None:
    pytest.skip(f"no container runtime can run here: {reason}")


@pytest.fixture(scope="module")
def base_image() -> str:
    if shutil.which("podman") is None:
        _skip("podman is not installed (.ci/run installs it where apt-get works; see docs/serve.md)")
    if os.geteuid() != 0:
        _skip("this test drives podman as root (rootless podman needs /etc/subuid ranges and a user session)")
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "containers.conf").write_text(CONTAINERS_CONF)
    (WORK / "storage.conf").write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{WORK}/storage"\n'
                                       f'runroot = "{WORK}/run"\n')
    info = podman("info", check=False)
    if info.returncode != 0:
        _skip(f"`podman info` failed: {info.stderr.strip()[-500:]}")
    base = os.environ.get("SCRATCHLLM_CONTAINER_BASE", "")
    if not base:
        base = LOCAL_BASE
        if podman("image", "exists", base, check=False).returncode != 0:
            _build_local_base(base)
    probe = podman("run", "--rm", base, "python", "-c", "print('ok')", check=False)
    if probe.returncode != 0 or probe.stdout.strip() != "ok":
        _skip(f"podman cannot run a container: {(probe.stderr or probe.stdout).strip()[-500:]}")
    return base


def _build_local_base(tag: str) -> None:
    """A stand-in for python:3.11-slim from the distribution's packages: python and pip on PATH via a venv."""
    if shutil.which("mmdebstrap") is None:
        _skip("no base image: no registry is used here and mmdebstrap (which builds one) is not installed")
    rootfs = WORK / "base-rootfs.tar"
    drop = [f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "info", "locale")]
    hooks = [
        # Behind a TLS-intercepting proxy pip must trust the host's extra CA certificates (harmless elsewhere).
        'for c in /usr/local/share/ca-certificates/*.crt; do [ -f "$c" ] && cp "$c" "$1/usr/local/share/'
        'ca-certificates/"; done; chroot "$1" update-ca-certificates',
        'printf "[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n" > "$1/etc/pip.conf"',
        'chroot "$1" python3 -m venv /opt/venv',
    ]
    cmd = ["mmdebstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", *drop,
           *[f"--customize-hook={h}" for h in hooks], "bookworm", str(rootfs)]  # the host's apt sources
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        _skip(f"mmdebstrap could not build a base image (no Debian mirror?): {r.stderr.strip()[-800:]}")
    podman("import", "--change", "ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "--change", "ENV LANG=C.UTF-8", str(rootfs), tag, timeout=600)
    rootfs.unlink()


def _torch_wheel() -> Path | None:
    """The installed torch's wheel in pip's find-links folders (machines without the torch index), if any."""
    import torch

    r = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    folders = [os.environ.get("PIP_FIND_LINKS", "")]
    folders += [line.partition("=")[2].strip("'\" ") for line in r.stdout.splitlines() if "find-links" in line]
    want = f"torch-{torch.__version__}-cp3{sys.version_info.minor}-"  # the base image's Python is 3.11
    for folder in filter(None, " ".join(folders).split()):
        for wheel in sorted(Path(folder.removeprefix("file://")).glob(want + "*.whl")):
            return wheel
    return None


@pytest.fixture(scope="module")
def pipeline_model(tmp_path_factory) -> Path:
    """The micro pipeline's quantized model directory (the README serves runs/model-int8), written as root
    with umask 022: the server in the container, uid 10001, must be able to read it."""
    run_dir = tmp_path_factory.mktemp("container") / "run"
    old = os.umask(0o022)
    try:
        assert main(["pipeline", "--config", str(ROOT / "configs/pipeline/micro.toml"), f"run_dir={run_dir}",
                     "pretrain.train.max_steps=10", "pretrain.eval.interval=5",
                     "skip=['ablation', 'sft', 'dpo', 'align_compare', 'export_hf', 'serve', 'report']"]) == 0
    finally:
        os.umask(old)
    return run_dir / "quantize"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def image(base_image) -> str:
    """The image built with the README's `docker build` line, plus what this machine needs: the base (no
    registry), a local torch wheel where the torch index is unreachable, host networking for pip, and docker
    format (podman's default OCI format drops HEALTHCHECK). Rebuilt each run; unchanged layers are cached."""
    build = readme_docker_commands()["build"]
    tag = build[build.index("-t") + 1]
    extra = ["--format", "docker", "--network", "host", "--build-arg", f"BASE={base_image}"]
    wheel = _torch_wheel()
    if wheel is not None:
        extra += ["-v", f"{wheel.parent}:/wheels:ro", "--build-arg", f"TORCH=/wheels/{wheel.name}"]
    start = time.monotonic()
    podman(build[0], *extra, *build[1:], cwd=ROOT, timeout=1800)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout)
    print(f"image {tag}: built in {time.monotonic() - start:.0f} s, {size / 1e6:.0f} MB on {base_image}")
    yield tag
    podman("image", "prune", "-f", check=False)  # superseded layers of earlier builds; the cache stays


def _wait_ready(url: str, container: str, timeout: float = 180) -> None:
    """Until /health answers (then /ready must say ready); fails with the logs if the container stops."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        state = podman("inspect", "--format", "{{.State.Status}}", container, check=False).stdout.strip()
        if state != "running" or time.monotonic() > deadline:
            logs = podman("logs", container, check=False)
            pytest.fail(f"the server did not come up ({state or 'no container'}):\n{logs.stdout}{logs.stderr}")
        time.sleep(0.5)
    assert httpx.get(f"{url}/ready", timeout=5).json()["status"] == "ready"


@pytest.mark.slow  # ~1.5 min with the base image and torch layer cached; ~13 min cold on a loaded 2-core VM
def test_image_serves_the_pipeline_model_as_the_readme_says(image, pipeline_model, tmp_path):
    import httpx
    from openai import OpenAI

    # Run the README's command (detached and named, on a free loopback port) with $PWD/runs/model-int8
    # being the pipeline's model directory.
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "model-int8").symlink_to(pipeline_model)
    port = _free_port()
    run = [w.replace("$PWD", str(tmp_path)) for w in readme_docker_commands()["run"][1:]]
    run = [f"127.0.0.1:{port}:8000" if w == "8000:8000" else w for w in run]
    assert image in run
    env = podman("image", "inspect", "--format", "{{.Config.Env}}", image).stdout
    assert "API_KEY" not in env, env  # no key baked into the image
    podman("rm", "-f", NAME, check=False)
    podman("run", "-d", "--name", NAME, "--network", "bridge", *run)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, NAME)

        page = httpx.get(f"{url}/", timeout=10)  # the chat page: package data made it into the image
        assert page.status_code == 200 and "<html" in page.text.lower()

        # The image's own HEALTHCHECK (no systemd timers here: run it by hand); exit 0 = healthy.
        assert podman("healthcheck", "run", NAME, check=False).returncode == 0

        # One completion from the host with the official client.
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        out = client.completions.create(model="scratchllm", prompt="Once upon a time", max_tokens=8, temperature=0)
        assert out.usage.completion_tokens >= 1 and isinstance(out.choices[0].text, str)

        # The server (PID 1) runs as non-root and cannot write the model volume.
        status = podman("exec", NAME, "python", "-c", "print(open('/proc/1/status').read())").stdout
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert all(int(u) != 0 for u in uid_line.split()[1:]), uid_line
        write = podman("exec", NAME, "python", "-c", "open('/model/x', 'w')", check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr, write.stderr
        rss = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        print(f"server in the container: {uid_line.split()[1:]}, {rss}")
    finally:
        podman("rm", "-f", "-t", "5", NAME, check=False)
    assert podman("container", "exists", NAME, check=False).returncode != 0


@pytest.mark.slow
def test_compose_file_with_an_api_key_from_the_environment_and_from_a_secret_file(image, pipeline_model, tmp_path):
    """compose.yaml as shipped (key from $SCRATCHLLM_API_KEY), then with its secret-file lines uncommented."""
    import openai

    if shutil.which("podman-compose") is None:
        pytest.skip("podman-compose is not installed (.ci/run installs it where apt-get works)")
    with_secret = compose_with_secret_file()
    env = {**os.environ, "CONTAINERS_CONF": str(WORK / "containers.conf"),
           "CONTAINERS_STORAGE_CONF": str(WORK / "storage.conf"), "MODEL_DIR": str(pipeline_model)}
    env.pop("SCRATCHLLM_API_KEY", None)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "api_key").write_text("sk-from-secret-file\n")
    (tmp_path / "secrets" / "api_key").chmod(0o644)  # the server's uid 10001 reads it (a bind mount keeps modes)
    (tmp_path / "with-secret.yaml").write_text(with_secret)

    for compose_file, key in [(ROOT / "compose.yaml", "sk-from-environment"),
                              (tmp_path / "with-secret.yaml", "sk-from-secret-file")]:
        port = _free_port()
        project = f"scratchllm-compose-test-{port}"
        run_env = {**env, "PORT": str(port), **({"SCRATCHLLM_API_KEY": key} if "environment" in key else {})}

        def compose(*args: str, check: bool = True) -> subprocess.CompletedProcess:
            r = subprocess.run(["podman-compose", "-f", str(compose_file), "-p", project, *args], env=run_env,
                               capture_output=True, text=True, timeout=300, cwd=compose_file.parent)
            if check and r.returncode != 0:
                pytest.fail(f"podman-compose {' '.join(args)} exited {r.returncode}:\n"
                            f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
            return r

        try:
            compose("up", "-d")
            container = f"{project}_server_1"
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, container)
            assert podman("healthcheck", "run", container, check=False).returncode == 0  # compose's, on /ready
            limits = podman("inspect", "--format", "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} "
                            "{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.RestartPolicy.Name}}", container).stdout
            assert limits.split() == [str(2 * 2**30), str(2 * 10**9), "true", "unless-stopped"], limits
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
            out = client.completions.create(model="scratchllm", prompt="The ", max_tokens=4, temperature=0)
            assert out.usage.completion_tokens >= 1
        finally:
            compose("down", "-t", "5", check=False)
        assert podman("container", "exists", container, check=False).returncode != 0
