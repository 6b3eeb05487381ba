# syntax=docker/dockerfile:1
# A station's fog service: evfl fog serve. Build from the repository root:
#   docker build -f deploy/docker/fog.Dockerfile -t evfl-fog:0.1.0 .
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
# Only the station's extra: no scikit-learn, matplotlib or MQTT client in this image.
RUN /opt/evfl/bin/pip install --no-cache-dir --constraint constraints.txt ".[fog]"

FROM python:3.11.14-slim-bookworm
RUN groupadd --system --gid 10001 evfl \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/evfl-fog --shell /usr/sbin/nologin evfl \
    && mkdir -p /etc/evfl-fog /var/lib/evfl-fog \
    && chown 10001:10001 /var/lib/evfl-fog \
    && chmod 0700 /var/lib/evfl-fog
COPY --from=build /opt/evfl /opt/evfl
ENV PATH=/opt/evfl/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/evfl-fog \
    TF_CPP_MIN_LOG_LEVEL=2
USER 10001:10001
WORKDIR /var/lib/evfl-fog
# gRPC (StationService + grpc.health.v1), Prometheus /metrics: the listen and metrics_listen
# ports of deploy/compose/fog-*.toml and deploy/k8s/fog-config.yaml.
EXPOSE 50051 9101
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "proto.health_probe", "--target", "127.0.0.1:50051"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["evfl", "fog", "serve"]
CMD ["--config", "/etc/evfl-fog/fog.toml", "--log-format", "json"]
