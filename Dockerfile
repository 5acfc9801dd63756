# The jobsys worker image: `docker build -t jobsys .` (docs/deploy.md).
#
#   docker run --rm --env-file broker.env jobsys \
#       worker jobsys.cli.demo_app:app --topology topology/example.yaml --metrics-port 9100 \
#       --metrics-bind 0.0.0.0
#
# broker.env holds JOBSYS_URL=amqp://user:password@host:5672/vhost: the URL is a secret, so it
# comes from the environment at run time and is never baked into the image. For your own app,
# build FROM this image and COPY your package and topology into /app (docs/deploy.md).

# -- build: wheels for jobsys and its extras, in a stage the final image does not keep --------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY jobsys ./jobsys
# prometheus: --metrics-port (and the /livez and /readyz probes); otlp: traces to Jaeger or any
# OpenTelemetry collector (OTEL_EXPORTER_OTLP_ENDPOINT).
RUN python -m venv /opt/jobsys \
    && /opt/jobsys/bin/pip install '.[prometheus,otlp]'

# -- run: the slim base, the virtualenv, and nothing else --------------------------------------
FROM python:3.11-slim
ENV PATH=/opt/jobsys/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /app jobsys
COPY --from=build /opt/jobsys /opt/jobsys
WORKDIR /app
COPY topology ./topology
USER 10001:10001

# jobsys is PID 1 and handles SIGTERM itself: it stops taking jobs, lets the running ones finish
# within --grace (30s by default), requeues the rest, runs the app's shutdown hooks (each within
# --hook-timeout) and exits 0. Give the container longer than that to stop: `docker stop -t`,
# compose's stop_grace_period, Kubernetes' terminationGracePeriodSeconds.
STOPSIGNAL SIGTERM
EXPOSE 9100
ENTRYPOINT ["jobsys"]
CMD ["--help"]
