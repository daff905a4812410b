# ebpf-edge-agent: Debian bookworm, the distribution's BCC, the agent in a venv.
#
#   make image        (podman, see scripts/image.sh and docs/deploy.md)
#   docker build -t ebpf-edge-agent .   works the same where Docker is available
#
# At run time the container needs, from the host (manifests/base/daemonset.yaml does all this):
#   the host's / read-only at /host      its /proc (every netns, every pod's processes), its
#                                        cgroup tree, and the kernel headers when it has them:
#                                        /lib/modules and /usr/src in the image are links into
#                                        /host, so the headers' absolute links resolve there.
#                                        A node without headers for its running kernel needs
#                                        none: the image carries a generic tree (below)
#   the host's /sys/kernel at /sys/kernel  tracefs (at tracing/ or debug/tracing/) and BTF
#   CAP_BPF, CAP_PERFMON (kernel >= 5.8; CAP_SYS_ADMIN before), see the DaemonSet for the rest
#   a writable /tmp (the root filesystem can be read-only)
# A host without tracefs still runs the container: the probes are reported unsupported with the
# reason (nothing is created on the host).

# A generic kernel header tree for the image's architecture (Debian's current headers, merged
# from the split -<flavour>/-common packages by scripts/generic-headers.sh). BCC compiles against
# it when the host has no headers of the running kernel: our programs read only tracepoint
# fields, whose layout BCC takes from the running kernel's format files.
FROM docker.io/library/debian:bookworm-slim AS headers
COPY scripts/generic-headers.sh /generic-headers.sh
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "linux-headers-$(dpkg --print-architecture)" \
 && /generic-headers.sh /kernel-headers

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
COPY extender /src/extender
RUN PIP_CERT="${PIP_CERT}" "$VENV/bin/pip" install --no-cache-dir --disable-pip-version-check \
        --no-compile /src \
 && "$VENV/bin/pip" uninstall -y --disable-pip-version-check pip setuptools \
 && rm -rf /src \
 && "$VENV/bin/python" -m compileall -q "$VENV/lib" /usr/lib/python3/dist-packages/bcc

# Kernel headers come from the host: /lib/modules/<release>/build points (absolutely) into
# /usr/src, so both lead into the host's root mounted at /host.
RUN rm -rf /usr/src /lib/modules \
 && ln -s /host/usr/src /usr/src \
 && ln -s /host/lib/modules /lib/modules

# The BPF C sources: the agent installed from a wheel does not carry them, so point bpf_dir here.
# Likewise the report schema the extender validates pushes against (ebpf-edge-extender, the
# second program of this image: manifests/scheduler runs it with this image's venv).
COPY bpf /opt/ebpf-edge-agent/bpf
COPY --from=headers /kernel-headers /opt/ebpf-edge-agent/kernel-headers
COPY schemas /opt/ebpf-edge-agent/schemas
ENV EBPF_EDGE_AGENT_BPF_DIR=/opt/ebpf-edge-agent/bpf \
    EBPF_EDGE_AGENT_IMAGE_HEADERS=/opt/ebpf-edge-agent/kernel-headers \
    EBPF_EDGE_EXTENDER_SCHEMA_FILE=/opt/ebpf-edge-agent/schemas/node-report.schema.json \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HEALTHCHECK_URL=http://127.0.0.1:9810/healthz

# OCI labels. version, revision and source are set by scripts/image.sh with `--label` (a LABEL
# from a build ARG is served from buildah's layer cache even when the ARG changed, so a rebuild
# after a commit kept the old revision); with Docker pass the same three --label flags.
LABEL org.opencontainers.image.title="ebpf-edge-agent" \
      org.opencontainers.image.description="Per-node eBPF agent for a network-aware scheduler" \
      org.opencontainers.image.licenses="Apache-2.0"

EXPOSE 9810
# Kubernetes ignores HEALTHCHECK (the DaemonSet has its own probes); podman and Docker use it.
# HEALTHCHECK_URL follows a changed listen address (not an EBPF_EDGE_AGENT_ variable: the agent
# rejects unknown keys under its prefix).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/ebpf-edge-agent/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]

# The program is the entrypoint and `run` its default argument: `podman run IMAGE check-kernel`
# runs another command; the DaemonSet's args start with "run" (they replace this CMD).
ENTRYPOINT ["/opt/ebpf-edge-agent/venv/bin/ebpf-edge-agent"]
CMD ["run"]
