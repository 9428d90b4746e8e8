# Prometheus from Debian's package, for CI only (scripts/ci_docker.sh), where no image registry is
# reachable: docker-compose.ci.yml runs it in place of prom/prometheus, laid out like that image
# (/bin/prometheus, user nobody, data in /prometheus). The build context holds the .deb that
# `apt-get download prometheus` fetched on the host; only its binaries are used.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY prometheus_*.deb /tmp/
RUN dpkg-deb -x /tmp/prometheus_*.deb /tmp/pkg \
 && install -m 0755 /tmp/pkg/usr/bin/prometheus /tmp/pkg/usr/bin/promtool /bin/ \
 && rm -rf /tmp/pkg /tmp/prometheus_*.deb \
 && mkdir -p /prometheus /etc/prometheus && chown 65534:65534 /prometheus
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
