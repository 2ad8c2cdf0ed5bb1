# Two images from one file (docker-compose.yml picks one per service with build.target):
#   serve  the triage worker, the doors, the watcher, beat, delivery and Flower. The model
#          runs on LiteRT from each version's model.tflite: no TensorFlow (installed
#          packages 0.36 GB instead of 2.1 GB).
#   train  serve plus TensorFlow/Keras: the retraining worker, `melanoma-triage train` and
#          `evaluate`, and the LiteRT export of every new model version.
# Exact versions from the lock file.

FROM python:3.11-slim AS base
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
RUN useradd --create-home --uid 10001 triage && mkdir -p /data && chown triage /data
ENV TRIAGE_HOME=/data OMP_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2
ENTRYPOINT ["melanoma-triage"]
CMD ["status"]

FROM base AS train
RUN pip install --no-cache-dir -c constraints.txt ".[serve,train]"
USER triage

# Last, so that a plain `docker build .` gives the small serving image.
FROM base AS serve
RUN pip install --no-cache-dir -c constraints.txt ".[serve,flower]"
USER triage
