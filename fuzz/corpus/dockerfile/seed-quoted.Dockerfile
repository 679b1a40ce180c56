FROM "alpine:3" AS "a b"
RUN echo '${X:-y}' "$Y"
