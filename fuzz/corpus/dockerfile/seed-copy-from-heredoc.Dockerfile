ARG V=3
FROM --platform=$TARGETPLATFORM alpine:${V} AS build
COPY --from=busybox:1.36 --chown=0:0 <<EOF /x
body
EOF
FROM build
COPY --from=0 /x /y
