FROM \
  # a comment inside the instruction
  alpine:3.20 \

  AS \
  builder
RUN apk add --no-cache \
      curl \
      # FROM evil
      git
from BUILDER as final
