# syntax=docker/dockerfile:1
# The cloud coordinator: evfl coordinator run. Build from the repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t evfl-coordinator:0.1.0 .
# Base image pinned by tag (see deploy/README.md, "Images", for pinning by digest).

FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/evfl
COPY deploy/docker/constraints.txt /src/constraints.txt
COPY pyproject.toml README.md /src/
COPY evfl /src/evfl
COPY models /src/models
COPY proto /src/proto
COPY agent /src/agent
COPY fog_node /src/fog_node
COPY coordinator /src/coordinator
# Only the coordinator's extra (the shipped datasets come with the package, for evaluation).
RUN /opt/evfl/bin/pip install --no-cache-dir --constraint constraints.txt ".[coordinator]"

FROM python:3.11.14-slim-bookworm
RUN groupadd --system --gid 10001 evfl \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/evfl-coordinator --shell /usr/sbin/nologin evfl \
    && mkdir -p /etc/evfl-coordinator/tasks /var/lib/evfl-coordinator \
    && chown 10001:10001 /var/lib/evfl-coordinator \
    && chmod 0700 /var/lib/evfl-coordinator
COPY --from=build /opt/evfl /opt/evfl
ENV PATH=/opt/evfl/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/evfl-coordinator \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=2
USER 10001:10001
WORKDIR /var/lib/evfl-coordinator
# gRPC (CloudService + grpc.health.v1), Prometheus /metrics: the cloud_listen and
# metrics_listen ports of deploy/compose/coordinator.toml and deploy/k8s/coordinator-config.yaml.
EXPOSE 50070 9102
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "proto.health_probe", "--target", "127.0.0.1:50070"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["evfl", "coordinator", "run"]
CMD ["--config", "/etc/evfl-coordinator/coordinator.toml", \
     "--task", "/etc/evfl-coordinator/tasks/dundee-energy.toml", "--log-format", "json"]
