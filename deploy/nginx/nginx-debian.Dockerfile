# The gRPC load balancer of docker-compose.replicas.yml: Debian's nginx (Envoy is not packaged there),
# non-root, configured by a mounted file (deploy/nginx/nginx.compose.conf). Build context: deploy/nginx.
#
# Offline builds (a machine with no registry or network, as scripts/ci_docker.sh builds the
# Prometheus image): put the nginx .deb that `apt-get download nginx` fetched on a bookworm host into
# the context's debs/ folder and tag a bookworm base as BASE_IMAGE; only its binary is used, which
# needs libc, libcrypt, libpcre2, zlib and libssl3 (in a base with python3). Otherwise apt-get
# installs the package and its dependencies from the base's Debian mirror.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY . /tmp/ctx/
RUN set -eu; \
    if ls /tmp/ctx/debs/nginx_*.deb >/dev/null 2>&1; then \
      dpkg-deb -x "$(ls /tmp/ctx/debs/nginx_*.deb | head -1)" /tmp/pkg; \
      install -m 0755 /tmp/pkg/usr/sbin/nginx /usr/sbin/nginx; \
      rm -rf /tmp/pkg; \
    else \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx; \
      rm -rf /var/lib/apt/lists/* /var/log/nginx /var/lib/nginx /etc/nginx/sites-enabled; \
    fi; \
    rm -rf /tmp/ctx; \
    mkdir -p /etc/nginx/cnn; \
    /usr/sbin/nginx -V 2>&1 | head -1
USER 65534:65534
EXPOSE 8000
# SIGQUIT: graceful shutdown (finish open requests); SIGTERM would be nginx's fast shutdown.
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/usr/sbin/nginx", "-e", "stderr"]
CMD ["-c", "/etc/nginx/cnn/nginx.conf"]
