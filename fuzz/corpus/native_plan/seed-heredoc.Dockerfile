FROM debian:12 AS build
RUN <<EOT bash
  set -e
  echo "FROM not-a-base"
EOT
COPY <<-"CONF" /etc/app.conf
	FROM also-not-a-base
	CONF
RUN echo $((1<<3))
FROM scratch
COPY --from=build /etc/app.conf /
