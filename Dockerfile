# The deskpulse worker image: `docker build -t deskpulse .`, run as `deskpulse worker`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what `pip install .` needs, so that editing tests or docs does not rebuild the layer.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY streams ./streams
COPY exporters ./exporters
COPY deskpulse ./deskpulse
RUN pip install . && cd / && rm -rf /src

# Faust keeps a small local data directory under the working directory.
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/deskpulse deskpulse
WORKDIR /var/lib/deskpulse
USER deskpulse

# Listen on all interfaces inside the container; DESKPULSE_WEB_PORT defaults to 6066.
ENV DESKPULSE_WEB_HOST=0.0.0.0
EXPOSE 6066
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=6 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://localhost:' + os.environ.get('DESKPULSE_WEB_PORT', '6066') + '/readyz', timeout=3)"

CMD ["deskpulse", "worker"]
