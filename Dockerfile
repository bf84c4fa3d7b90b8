# The Segmenter worker (and CLI). Build: docker build -t segmenter .
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    SEGMENTER_WEB_HOST=0.0.0.0
WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY stream ./stream
COPY scripts ./scripts
# The package alone: not the [demo] extra (the embedded broker and Valkey of `segmenter demo`
# and the tests); the image runs against real Kafka and Redis.
RUN pip install . && useradd --system --uid 10001 segmenter
USER segmenter
EXPOSE 6066
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SEGMENTER_WEB_PORT', '6066'), timeout=2)"
ENTRYPOINT ["segmenter"]
CMD ["worker"]
