# An image for jobsys workers: `docker build -t jobsys .`, then run a worker for your app with
#   docker run --rm -e JOBSYS_URL=amqp://user:pass@broker:5672/ -v $PWD:/app/src jobsys \
#       worker myapp:app --topology topology.yaml
# (the command runs in /app/src when your code is mounted there; see docs/operations.md).
# `docker compose up` builds it and runs the demo against the compose broker.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY jobsys ./jobsys
COPY topology ./topology
RUN pip install . \
    && useradd --create-home --uid 10001 jobsys
USER jobsys

# SIGTERM drains (running jobs finish within --grace, 30s by default): give the container
# longer than that to stop (docker stop -t 40; compose's stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["jobsys"]
CMD ["--help"]
