# glassdetect serve in a container (docs/service.md).
#
#   docker build -t glassdetect .                                   # CPU torch (default)
#   docker build -t glassdetect:cu130 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 .
#   docker run -p 8000:8000 -v "$PWD/runs/demo/glass/seed0/best:/model:ro" \
#              -v "$PWD/tokens.txt:/run/secrets/glassdetect_tokens:ro" glassdetect
#
# The checkpoint is mounted at /model (read-only), or copied in at build time with
#   docker build --target bundled --build-arg CHECKPOINT=runs/demo/glass/seed0/best -t glassdetect:bundled .
# Tokens: a file mounted at /run/secrets/glassdetect_tokens (GLASSDETECT_TOKEN_FILE) or $GLASSDETECT_TOKENS.

ARG PYTHON=3.11

# ---- build: wheels for glassdetect and its pinned dependencies (torch from TORCH_INDEX) -------------
FROM python:${PYTHON}-slim AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" -c constraints.txt ".[serve]"

# ---- base: the virtual environment, a non-root user, an empty /model ----------------------------
FROM python:${PYTHON}-slim AS base
COPY --from=build /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin glassdetect \
 && mkdir -p /model && chown glassdetect /model
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PORT=8000 OMP_WAIT_POLICY=PASSIVE
USER glassdetect
EXPOSE 8000
# docker stop waits 10 s by default: give it --time 30 (compose: stop_grace_period) for --shutdown-timeout 25.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-m", "glassdetect.service.healthcheck"]
ENTRYPOINT ["glassdetect", "serve"]
CMD ["/model", "--host", "0.0.0.0", "--port", "8000", "--log-format", "json", "--shutdown-timeout", "25"]

# ---- bundled: the checkpoint copied in (docker build --target bundled --build-arg CHECKPOINT=DIR) --
FROM base AS bundled
ARG CHECKPOINT
COPY --chown=glassdetect ${CHECKPOINT} /model/

# ---- runtime (the default target): the checkpoint mounted at /model -----------------------------
FROM base AS runtime
