# router-ml serve: the OpenAI-compatible routing proxy, with the runtime and the serve extras only (no torch,
# no training stack). Build:   docker build -t router-ml-serve .
# Run (the router artifact, the provider catalog and the log directory are mounted; see the README's
# "Serving in production"):
#   docker run -p 8000:8000 -e ROUTER_ML_API_KEY -e OPENAI_API_KEY \
#     -v $PWD/models/demo/artifact:/models/router:ro -v $PWD/providers.toml:/config/providers.toml:ro \
#     -v router-ml-logs:/var/lib/router-ml router-ml-serve

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router_ml ./router_ml
COPY training ./training
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
# the runtime (numpy, onnxruntime, tokenizers, httpx) and the serve extra (uvicorn, uvloop, httptools, orjson,
# prometheus_client); the check fails the build if anything pulled in the training stack
RUN pip install "$(echo /wheels/router_ml-*.whl)[serve]" \
    && rm -rf /wheels \
    && python -c "import router_ml.serve, httptools, orjson, uvicorn, prometheus_client" \
    && ! python -c "import torch" 2>/dev/null \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin router \
    && mkdir -p /var/lib/router-ml /models /config \
    && chown router:router /var/lib/router-ml
USER router
WORKDIR /home/router
# the decision log (one file per worker: decisions.jsonl, decisions.w1.jsonl, ... and their rotations)
VOLUME ["/var/lib/router-ml"]
EXPOSE 8000
# liveness; a load balancer or Kubernetes should use GET /ready for readiness (503 while draining)
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
# SIGTERM drains: /ready turns 503, --drain-seconds pass, requests in flight finish, the log is complete
STOPSIGNAL SIGTERM
ENTRYPOINT ["router-ml", "serve"]
# clients must send the key in ROUTER_ML_API_KEY (a non-loopback bind refuses to start without one)
CMD ["--artifact", "/models/router", "--providers", "/config/providers.toml", \
     "--host", "0.0.0.0", "--port", "8000", "--api-key-env", "ROUTER_ML_API_KEY", \
     "--decision-log", "/var/lib/router-ml/decisions.jsonl", \
     "--workers", "2", "--drain-seconds", "5", "--shutdown-timeout", "60"]
