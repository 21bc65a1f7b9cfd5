# One image for every service; the compose file picks the entry point per container.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never HOST=0.0.0.0
RUN pip install --no-cache-dir uv
WORKDIR /app
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY core core
COPY server server
COPY gateway gateway
COPY fanout fanout
COPY push push
COPY web web
COPY ranking ranking
ENV PATH="/app/.venv/bin:$PATH"
USER nobody
CMD ["python", "-m", "server"]
