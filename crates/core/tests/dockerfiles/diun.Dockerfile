# syntax=docker/dockerfile:1
# The shape of Diun's own Dockerfile: platform ARGs used undeclared, in
# FROM --platform and in a stage name (`binary-$TARGETOS` is `binary-linux`).

ARG GO_VERSION="1.23"
ARG ALPINE_VERSION="3.20"
ARG XX_VERSION="1.5.0"

FROM --platform=$BUILDPLATFORM tonistiigi/xx:${XX_VERSION} AS xx

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-alpine${ALPINE_VERSION} AS base
COPY --from=xx / /
ENV CGO_ENABLED=0
RUN apk add --no-cache file git
WORKDIR /src

FROM base AS build
ARG TARGETPLATFORM
RUN --mount=type=bind,target=. <<EOT
  set -ex
  xx-go build -o /usr/bin/app ./cmd
EOT

FROM scratch AS binary-unix
COPY --link --from=build /usr/bin/app /

FROM scratch AS binary-windows
COPY --link --from=build /usr/bin/app /app.exe

FROM binary-unix AS binary-darwin
FROM binary-unix AS binary-linux
FROM binary-$TARGETOS AS binary

FROM alpine:${ALPINE_VERSION}
COPY --from=build /usr/bin/app /usr/local/bin/app
ENTRYPOINT [ "app" ]
