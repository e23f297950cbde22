FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY costmodel costmodel
COPY contracts contracts
COPY infra infra
COPY hybridspend hybridspend
COPY collectors collectors
COPY streams streams
COPY storage storage
COPY alerts alerts
COPY dashboards dashboards
COPY reports reports
RUN pip install --no-cache-dir . && useradd --system --uid 10001 hybridspend
USER hybridspend
ENV HYBRIDSPEND_CONFIG=/etc/hybridspend/config.yaml \
    HYBRIDSPEND_METRICS_HOST=0.0.0.0 \
    HYBRIDSPEND_BROKER_PROFILE=kafka
ENTRYPOINT ["hybridspend"]
