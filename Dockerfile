FROM python:3.11-slim

# DejaVu renders non-Latin patient names in the PDF reports.
RUN apt-get update \
 && apt-get install -y --no-install-recommends fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY worker ./worker
COPY schemas ./schemas
COPY migrations ./migrations
COPY model_store ./model_store
# One image runs every service of docker-compose.yml: the triage worker and doors (serve),
# the retraining worker (train) and Flower. Exact versions from the lock file.
RUN pip install --no-cache-dir -c constraints.txt ".[serve,train,flower]"

RUN useradd --create-home --uid 10001 triage && mkdir -p /data && chown triage /data
USER triage
ENV TRIAGE_HOME=/data OMP_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2
ENTRYPOINT ["melanoma-triage"]
CMD ["status"]
