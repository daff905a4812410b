# ebpf-edge-agent: Debian bookworm, the distribution's BCC, the agent in a venv.
#
#   make image        (podman, see scripts/image.sh and docs/deploy.md)
#   docker build -t ebpf-edge-agent .   works the same where Docker is available
#
# At run time the container needs, from the host (manifests/daemonset.yaml does all of this):
#   /lib/modules and /usr/src read-only at the same paths  kernel headers for BCC's compile
#                                                          (build/source links are absolute)
#   /sys/kernel/tracing (and /sys/kernel/debug)            tracepoint ids and format files
#   /proc at /host/proc, /sys/fs/cgroup at /host/sys/fs/cgroup   every netns and every pod
#   CAP_BPF, CAP_PERFMON (kernel >= 5.8; CAP_SYS_ADMIN before), see the DaemonSet for the rest
#   a writable /tmp (the root filesystem can be read-only)
FROM docker.io/library/debian:bookworm-slim

# python3-bpfcc is BCC from Debian (libbcc + clang/LLVM it compiles with). The PyPI package
# named "bcc" is an unrelated library and is never installed.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3-bpfcc python3-venv \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

# The venv gets only the agent's own dependencies; the distribution's bcc module is made
# importable through a .pth file naming a folder that holds only a bcc symlink (no
# --system-site-packages, which would leak every Debian Python package into the venv).
ENV VENV=/opt/ebpf-edge-agent/venv
RUN python3 -m venv "$VENV" \
 && mkdir -p /opt/ebpf-edge-agent/bcc-shim \
 && ln -s /usr/lib/python3/dist-packages/bcc /opt/ebpf-edge-agent/bcc-shim/bcc \
 && echo /opt/ebpf-edge-agent/bcc-shim \
        > "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/distro-bcc.pth" \
 && "$VENV/bin/python" -c 'import bcc'

# PIP_CERT: a CA bundle mounted into the build by scripts/image.sh where a proxy needs one.
ARG PIP_CERT=
COPY pyproject.toml README.md /src/
COPY agent /src/agent
RUN PIP_CERT="${PIP_CERT}" "$VENV/bin/pip" install --no-cache-dir --disable-pip-version-check \
        --no-compile /src \
 && "$VENV/bin/pip" uninstall -y --disable-pip-version-check pip setuptools \
 && rm -rf /src \
 && "$VENV/bin/python" -m compileall -q "$VENV/lib" /usr/lib/python3/dist-packages/bcc

# The BPF C sources: the agent installed from a wheel does not carry them, so point bpf_dir here.
COPY bpf /opt/ebpf-edge-agent/bpf
ENV EBPF_EDGE_AGENT_BPF_DIR=/opt/ebpf-edge-agent/bpf \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HEALTHCHECK_URL=http://127.0.0.1:9810/healthz

EXPOSE 9810
# Kubernetes ignores HEALTHCHECK (the DaemonSet has its own probes); podman and Docker use it.
# HEALTHCHECK_URL follows a changed listen address (not an EBPF_EDGE_AGENT_ variable: the agent
# rejects unknown keys under its prefix).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/ebpf-edge-agent/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]

ENTRYPOINT ["/opt/ebpf-edge-agent/venv/bin/ebpf-edge-agent", "run"]
