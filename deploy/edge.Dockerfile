# syntax=docker/dockerfile:1
# The nginx edge of deploy/compose.yaml: Debian 12's nginx with the stream module (RTMP, RTMPS), the
# nginx that tests/test_deploy_edge.py runs deploy/nginx-edge.conf on. Certificates are mounted in
# /etc/nginx/tls.
#   docker build -f deploy/edge.Dockerfile -t minilive-edge deploy
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx libnginx-mod-stream \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /dev/stderr /var/log/nginx/error.log
COPY nginx-edge.conf /etc/nginx/nginx.conf
EXPOSE 443 1935 1936
# SIGQUIT: finish the requests in flight (FLV players: worker_shutdown_timeout), then stop.
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
