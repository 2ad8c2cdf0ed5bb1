FROM python:3.11-slim

# DejaVu renders non-Latin patient names in the PDF reports.
RUN apt-get update \
 && apt-get install -y --no-install-recommends fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY schemas ./schemas
COPY migrations ./migrations
COPY model_store ./model_store
RUN pip install --no-cache-dir ".[flower]"

RUN useradd --create-home --uid 10001 triage && mkdir -p /data && chown triage /data
USER triage
ENV TRIAGE_HOME=/data OMP_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2
ENTRYPOINT ["melanoma-triage"]
CMD ["status"]
