# The Barge image: one image for every process (api, worker, scheduler, migrate, flower);
# docker-compose.yml picks the process with the command.
#
#   docker build -t barge .
#   docker run --rm barge barge --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, in a layer of its own: it is by far the largest dependency and changes least.
# The pin matches pyproject.toml and the Makefile. The default Linux x86_64 wheel for this pin is a
# CUDA build; for a GPU image built against a specific CUDA version (or a smaller CPU-only image),
# add `--index-url <the CUDA wheel index of your choice>` to both torch installs below.
RUN pip install 'torch==2.13.*'

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY barge/ barge/
COPY db/ db/
COPY services/ services/
COPY api/ api/
COPY worker/ worker/
COPY cli/ cli/
COPY migrations/ migrations/

# A regular (non-editable) install; `.[flower]` adds Flower for the monitoring service.
# Repeating the torch pin keeps the resolver from replacing the build installed above.
RUN pip install 'torch==2.13.*' '.[flower]' && rm -rf build ./*.egg-info

# Run as an unprivileged user. BARGE_HOME holds the beat schedule; BARGE_CACHE_DIR holds the model
# cache (a volume in docker-compose.yml). Both are created here so that named volumes mounted on
# them start out owned by this user.
RUN useradd --create-home --uid 10001 --user-group barge \
    && mkdir -p /var/lib/barge /var/cache/barge \
    && chown barge:barge /var/lib/barge /var/cache/barge
ENV BARGE_HOME=/var/lib/barge \
    BARGE_CACHE_DIR=/var/cache/barge \
    HF_HOME=/var/cache/barge/huggingface
USER barge

EXPOSE 8000
# No ENTRYPOINT, so that any command (`barge ...`, `celery ...`) can be given in full.
CMD ["barge", "api", "--host", "0.0.0.0", "--port", "8000"]
