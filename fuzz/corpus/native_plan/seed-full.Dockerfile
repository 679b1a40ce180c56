ARG TAG=1.36
FROM busybox:${TAG}
ARG TARGETARCH
ENV A=1 B="two words" C=${A:-x}
ENV LEGACY value with spaces
LABEL org.opencontainers.image.title="t" x=y
WORKDIR app
WORKDIR ../srv/./x
USER ${USER:-app}:app
COPY --chown=app:app --chmod=0644 a b /dst/
ADD ["x y", "/z/"]
EXPOSE 80 443/tcp 8000-8002/udp
VOLUME ["/data", "/cache"]
STOPSIGNAL SIGTERM
SHELL ["/bin/ash", "-c"]
HEALTHCHECK --interval=1m30s --timeout=500ms --retries=3 CMD wget -q localhost
ONBUILD COPY . /
MAINTAINER someone
ENTRYPOINT ["/bin/app"]
CMD --help
