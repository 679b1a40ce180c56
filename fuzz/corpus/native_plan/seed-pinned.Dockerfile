FROM alpine:3.20@sha256:ee3a7427e984f3d47ef6b31962b8255b59b97c4a79dc6804134da3986c55288a
FROM index.docker.io/library/ubuntu
FROM localhost:5000/team/app:v1
COPY --from=0 / /
